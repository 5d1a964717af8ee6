"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class KoalarizationError(Exception):
    """A problem the user can act on: the message names the file or flag and the fix."""
