"""One exception family. The CLI prints the message as one line and exits 2.

Messages say what was wrong and what to do about it.
"""

import argparse
import difflib
import sys


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


class UsageError(GlassError):
    """A command line the parser refused: an unknown option, a missing argument, a bad choice."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UsageErrors, so that a mistyped option is reported like every
    other bad input (one `error: ...` line, exit 2) instead of a usage block. Subparsers inherit it."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def exit_code(fn, *args) -> int:
    """Run a command: its return value as the exit status; a GlassError as one line and status 2."""
    try:
        return int(fn(*args) or 0)
    except GlassError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
