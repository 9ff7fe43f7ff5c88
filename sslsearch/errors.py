"""The one exception type that means "the user asked for something we cannot do"."""


class InputError(ValueError):
    """Bad user input: the message is one line saying what was wrong and what is accepted.

    The CLI prints it without a traceback and exits with code 2.
    """
