"""The one exception family users see: a clear, one-line message, never a traceback."""


class PerceptionError(Exception):
    """A user mistake (bad file, argument or config). The CLI prints ``str(err)`` only."""
