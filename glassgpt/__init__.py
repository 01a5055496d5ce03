"""glassgpt: an open, hackable GPT-4-style system."""

from glassgpt.errors import GlassError

__version__ = "0.1.0"
__all__ = ["GlassError", "__version__"]
