"""One exception family. The CLI prints the message as one line and exits 2.

Messages say what was wrong and what to do about it.
"""

import difflib


class GlassError(Exception):
    """Base class for every user-facing error."""


class ConfigError(GlassError):
    """A bad config key, value, preset or override."""


class DataError(GlassError):
    """Missing, empty or unusable input data."""


class CheckpointError(GlassError):
    """A checkpoint that is missing, corrupt or from another config."""


class TrainingError(GlassError):
    """A run that cannot continue (NaN loss, divergence)."""


def closest(name: str, options) -> str:
    """' (did you mean X?)' for the closest option, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class ScalingError(GlassError):
    """A ladder, fit or prediction that cannot be made or trusted (budgets, degenerate fits, hashes)."""
