"""glassgpt's implementations of eval classes (reference class paths map here)."""
