"""The run folder's error, in a module of its own: the run folder and the checkpoints it finds
both raise it, and the run folder imports the checkpoint code, so neither can hold it."""


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (a file in its place, another run's config or model)."""
