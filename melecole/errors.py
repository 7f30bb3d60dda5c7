"""The one exception type the command line turns into a clean one-line message."""


class MelecoleError(Exception):
    """A problem with the user's input or configuration, explained in one line.

    The CLI catches it, prints ``error: <message>`` to stderr and exits with status 2, so
    users never see a traceback from deep inside numpy or h5py for a mistake of theirs.
    """
