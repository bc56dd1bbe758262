"""The one user-facing error type: its message is a single line naming file/field/value."""


class SlmkitError(Exception):
    """One-line user-facing error; the CLI prints it without a traceback."""
