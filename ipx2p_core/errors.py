"""The engine's one error type: every message says what was wrong, the value, and what would be right."""


class IP2PError(ValueError):
    """A bad input or a model that cannot be used. The process stays usable after it is raised."""


class Cancelled(RuntimeError):
    """Sampling stopped between steps because the cancel check asked for it; no state was left half-done."""
