"""Completion functions and the name -> function factory used by the CLI and runner.

Names:
    scripted | scripted:echo | scripted:const:TEXT | scripted:file:PATH | dummy
    local:RUN_DIR  (or an existing run directory)     a glassgpt checkpoint, in-process
    completions:MODEL                                  an OpenAI-compatible /v1/completions model
    openai:MODEL | chat:MODEL                          an OpenAI-compatible chat model
    any other name                                     routed as the reference's `oaieval` routes it:
        a chat model by the reference's list (gpt-3.5-turbo*, gpt-4, gpt-4-*) -> chat;
        else a model the endpoint lists at /v1/models -> /v1/completions (the chat prompt
        flattened to text with the reference's "User: ... Assistant:" rendering);
        else a key in a registry's completion_fns/*.yaml (a glassgpt class);
        else (where the reference stops) gpt-4-base / gpt-3.5-turbo-instruct* -> completions,
        any other name -> chat.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Optional

from ..errors import EvalError
from .base import CompletionFn, CompletionResult, ScriptedCompletionFn, load_scripted, prompt_key
from .cache import CachedCompletionFn, ResponseCache
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

__all__ = ["CompletionFn", "CompletionResult", "ScriptedCompletionFn", "CachedCompletionFn", "ResponseCache",
           "RateLimiter", "make_completion_fn", "parse_kv", "prompt_key"]


def _convert(v: str):
    if not isinstance(v, str):
        return v
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def parse_kv(text: str) -> dict:
    """'a=1,b=x' -> {'a': 1, 'b': 'x'} (the reference's --completion_args format)."""
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise EvalError(f"bad key=value pair '{part}' (expected like 'temperature=0,max_tokens=64')")
        k, v = part.split("=", 1)
        out[k.strip()] = _convert(v.strip())
    return out


def _has_vision(run_dir) -> bool:
    import yaml

    cfg_path = Path(run_dir) / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    except yaml.YAMLError:
        return False
    return bool(((cfg or {}).get("vision") or {}).get("enabled"))


def is_chat_model(name: str) -> bool:
    """The reference's rule (openai/evals `registry.is_chat_model`): only these names are chat
    models to `oaieval`; every other model name it finds at /v1/models is a completion model."""
    if name == "gpt-4-base" or name.startswith("gpt-3.5-turbo-instruct"):
        return False
    if name in ("gpt-3.5-turbo", "gpt-3.5-turbo-16k", "gpt-4", "gpt-4-32k"):
        return True
    return name.startswith(("gpt-3.5-turbo-", "gpt-4-"))


_MODEL_IDS: dict[str, list[str]] = {}
_MODEL_IDS_LOCK = threading.Lock()


def api_model_ids(base_url: Optional[str]) -> list[str]:
    """The model ids the endpoint lists at /v1/models (once per endpoint and process), as the
    reference asks its client; [] when it cannot be asked (no key for api.openai.com, an
    error, no such route), and the reference then looks in the registry."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    key = os.environ.get("OPENAI_API_KEY") or ("none" if base_url else None)
    if not key:
        return []
    where = base_url or ""
    with _MODEL_IDS_LOCK:
        if where not in _MODEL_IDS:
            import openai

            try:
                client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=10.0)
                _MODEL_IDS[where] = [m.id for m in client.models.list().data]
            except (openai.OpenAIError, ValueError, TypeError, AttributeError) as e:
                log.warning("could not list the models at %s: %s", base_url or "the OpenAI API", e)
                _MODEL_IDS[where] = []
        return _MODEL_IDS[where]


def make_completion_fn(name: str, registry=None, base_url: Optional[str] = None, limiter: Optional[RateLimiter] = None,
                       cache_dir: Optional[os.PathLike] = None, **kwargs) -> CompletionFn:
    name = name.strip()
    precision = kwargs.pop("precision", None)  # local models only: an endpoint chose its own
    fn: CompletionFn
    cacheable = True
    if name == "dummy":
        fn = ScriptedCompletionFn(default="This is a dummy response.", name="dummy", delay=float(kwargs.get("delay", 0)))
        cacheable = False
    elif name == "scripted" or name.startswith("scripted:"):
        fn = load_scripted(name, **kwargs)
        cacheable = False
    elif name.startswith("local:") or (Path(name).is_dir() and not name.startswith(("openai:", "chat:", "completions:"))):
        from .local import LocalModelFn

        run_dir = name.split(":", 1)[1] if name.startswith("local:") else name
        if not Path(run_dir).exists():
            raise EvalError(f"local run directory not found: {run_dir}")
        if _has_vision(run_dir):  # image-chat prompts need the run's encoder
            from ..vision import VisionLocalFn

            fn = VisionLocalFn(run_dir, **{k: v for k, v in kwargs.items() if k in ("max_tokens", "name")})
        else:
            fn = LocalModelFn.from_run_dir(run_dir, precision=precision, **kwargs)
    elif name.startswith(("openai:", "chat:", "completions:")):
        from .openai_compat import OpenAICompatFn

        prefix, model = name.split(":", 1)
        fn = OpenAICompatFn(model, base_url=base_url, chat=prefix != "completions", limiter=limiter, **kwargs)
    elif is_chat_model(name):
        from .openai_compat import OpenAICompatFn

        fn = OpenAICompatFn(name, base_url=base_url, chat=True, limiter=limiter, **kwargs)
    elif name in api_model_ids(base_url):
        from .openai_compat import OpenAICompatFn

        fn = OpenAICompatFn(name, base_url=base_url, chat=False, limiter=limiter, **kwargs)
    elif registry is not None and registry.get_completion_fn_spec(name) is not None:
        spec = registry.get_completion_fn_spec(name)
        from ..registry import load_class

        cls = load_class(str(spec.get("class", "")))
        fn = cls(**{**(spec.get("args") or {}), **kwargs})
    else:
        # The reference stops here ("Could not find CompletionFn/Solver in the registry").
        from .openai_compat import OpenAICompatFn

        chat = not (name == "gpt-4-base" or name.startswith("gpt-3.5-turbo-instruct"))
        log.info("%s: not a chat model by the reference's list, not listed by the endpoint, not in the "
                 "registry: sent to the %s endpoint", name, "chat" if chat else "completions")
        fn = OpenAICompatFn(name, base_url=base_url, chat=chat, limiter=limiter, **kwargs)
    if cache_dir is not None and cacheable:
        fn = CachedCompletionFn(fn, ResponseCache(cache_dir))
    return fn
