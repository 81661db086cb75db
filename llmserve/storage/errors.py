"""The storage layer's error."""


class StorageError(RuntimeError):
    """A model artifact that cannot be fetched, verified or prepared; the message says which and why."""
