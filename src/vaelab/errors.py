"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class VaelabError(Exception):
    """Bad input or a bad setting. The message names the file, field or key and what to do."""

    exit_status = 2  # of the vaelab command: a retry cannot fix it


class TryLater(VaelabError):
    """A service that is down (object storage), so the same command may work later."""

    exit_status = 75  # EX_TEMPFAIL, as for a full disk: schedulers retry it
