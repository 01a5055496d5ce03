"""Errors of the evals framework (one family with the rest of glassgpt)."""

from glassgpt.errors import GlassError


class EvalError(GlassError):
    """A bad registry entry, data file, eval name, or an eval that cannot run."""


class UnsupportedEvalClass(EvalError):
    """A registry eval whose class glassgpt does not implement (skipped in eval sets)."""


class CompletionError(EvalError):
    """A completion function that failed for one sample (endpoint down, garbage answer).

    The runner records it as an `error` event and the run continues."""
