"""The project's one error family. Every error raised on bad input or state (a file, a flag,
a checkpoint, a run folder) derives from MMERError and says which file, what is wrong and what
to do; each entry point catches MMERError once, prints it and exits with 2. It lives at the
bottom (models/ imports nothing of the project) so that every layer can derive from it."""


class MMERError(Exception):
    """Bad input or state, with a message naming the file and the fix."""
