"""The errors a user causes: bad data, a bad photo, a bad bundle, a bad option.

Every such error is a `TaggerError`, whose message names the file or the option and says what is
wrong, in one line; the command line prints it so, without a traceback. Anything else is a bug of
ours and shows its traceback. (Here, in the lowest package that raises one, so that every package
can use it: imports flow embeddings <- pipelines <- tagger.)
"""


class TaggerError(Exception):
    """An error the user caused; its message is one line naming the file or option and the problem."""


class OptionError(TaggerError, ValueError):
    """An option or setting that is unknown or out of range (a ValueError too, for callers that catch those)."""
