"""glassgpt.evals: an openai/evals-compatible evaluation framework.

Small pieces, as in the reference: a Registry of YAML specs and JSONL data, Eval
classes, completion functions (local checkpoint, OpenAI-compatible HTTP, scripted)
and a Recorder that writes the reference's JSONL log. Extras: threads with a
requests-per-minute limit, an on-disk response cache, `--resume`, built-in evals.
"""

from .errors import CompletionError, EvalError, UnsupportedEvalClass
from .record import Recorder, read_record
from .registry import BUILTIN_REGISTRY, Registry

__all__ = ["EvalError", "CompletionError", "UnsupportedEvalClass", "Registry", "BUILTIN_REGISTRY", "Recorder",
           "read_record", "run_eval", "run_target"]


def __getattr__(name):  # keep `import glassgpt.evals` light
    if name in ("run_eval", "run_target"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
