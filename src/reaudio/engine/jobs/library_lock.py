"""Errors the command line reports as one line, kept apart so it can catch them without
importing what raises them (the audio libraries)."""


class LibraryLocked(RuntimeError):
    """Another job holds the library folder."""
