"""The one exception type the command line turns into a one-line message."""


class UserError(ValueError):
    """Bad input from the user: a missing file, an invalid option, a corrupt checkpoint.

    A ValueError, so library code that catches bad values catches it too.

    The CLI prints `npgpt: error: <message>` and exits with status 2
    instead of showing a traceback.  Raise it with a message that names the
    problem and, where possible, the fix.
    """
