"""Errors that carry a message fit to show a user.

Every failure a user can cause (a bad image, a missing index, a wrong setting) is raised as a
`KontrolError` subclass; the CLI prints its message and the bot maps its class to a reply, so no
traceback ever reaches a person.
"""

from __future__ import annotations


class KontrolError(Exception):
    """Base class: `str(err)` is a complete, user-readable sentence."""


class ConfigError(KontrolError):
    """A setting has a wrong or inconsistent value."""


class ImageError(KontrolError):
    """An input is not a usable image (broken, not an image, too large, too small, ...)."""


class ImageTooSmallError(ImageError):
    """The image is too small to say anything about."""


class ImageTooLargeError(ImageError):
    """The image exceeds the pixel or byte limits (e.g. a decompression bomb)."""


class ModelUnavailableError(KontrolError):
    """Model weights cannot be found or loaded; the message says how to get them."""


class IndexMissingError(KontrolError):
    """No index has been built yet in the configured index directory."""


class IndexMismatchError(KontrolError):
    """The index on disk was built with another model/dimension, or its files disagree."""


class IndexCorruptError(KontrolError):
    """The index files on disk are damaged or unreadable."""


class IndexBusyError(KontrolError):
    """Another process or task is already writing this index."""


class UnknownSpeciesError(KontrolError):
    """A species filter names no species of the collection; `suggestions` holds close names."""

    def __init__(self, message: str, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.suggestions = suggestions or []
