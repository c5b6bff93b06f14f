"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class VaelabError(Exception):
    """Bad input or a bad setting. The message names the file, field or key and what to do."""
