"""The one exception users see: a plain sentence, printed by the CLIs without a traceback."""


class LandscapeError(ValueError):
    """A user-facing error: the message is one plain sentence shown without a traceback."""
