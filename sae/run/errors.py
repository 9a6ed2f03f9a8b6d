"""The two kinds of failure a user can cause, mapped to exit codes by the CLI."""


class ToolkitError(Exception):
    """A failure with a one-line message meant for the user (no traceback)."""

    exit_code = 1


class UsageError(ToolkitError):
    """Bad input: a config key, a value, a file or a flag. Exit status 2."""

    exit_code = 2


class RunError(ToolkitError):
    """A failure while running (NaN loss, a crashed rank, ...). Exit status 1."""

    exit_code = 1
