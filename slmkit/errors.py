"""The one user-facing error type: its message is a single line naming file/field/value."""


class SlmkitError(Exception):
    """One-line user-facing error; the CLI prints it without a traceback."""


class Unavailable(SlmkitError):
    """What was asked needs something this machine or install does not have (local data, an optional package,
    a GPU). `slmkit demo` reports a stage that raises it as skipped, with this message as the reason."""
