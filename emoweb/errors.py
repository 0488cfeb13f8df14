"""User-facing errors: one readable line, never a traceback."""


class EmoWebError(Exception):
    """Base class: the message is shown to the person as is."""


class MediaError(EmoWebError):
    """The input file cannot be analysed (missing, empty, not media, corrupt, no usable stream)."""


class NotFoundError(EmoWebError):
    """An id (clip, profile, model) that does not exist."""


class UnknownLabelError(EmoWebError):
    """A label outside the profile's label set, given without allowing new labels. Each front end adds
    how to allow it there (the CLI's flag, the Label tab's box): the service knows neither."""


class SettingError(EmoWebError):
    """An EMOWEB_* setting whose value cannot be used (not a number, an unknown backbone set or device)."""
