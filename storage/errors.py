"""Storage errors with one-line messages, so callers can show them to a person as they are.

They do not derive from `emoweb.errors` because `storage/` never imports the application;
the application maps them where it needs to.
"""


class StorageError(Exception):
    """Base class of every error raised on purpose by `storage`."""


class NotFound(StorageError):
    """An id or name (profile, clip, snapshot, feature) that does not exist."""


class Invalid(StorageError):
    """A value the store refuses: empty name, unknown label, duplicate, bad array, ..."""
