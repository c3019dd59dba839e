"""Exception types. Every error pemn raises on purpose derives from :class:`PEMNError`."""

from __future__ import annotations


class PEMNError(Exception):
    """Base class of all pemn errors."""


class ConversionError(PEMNError, ValueError):
    """A model cannot be converted as asked (unsupported target, nothing matched, already converted)."""


class FormatError(PEMNError, ValueError):
    """An artifact is corrupt, foreign, of an unknown version, or does not fit the model it is loaded into."""


class ArchitectureMismatchError(FormatError):
    """The artifact's layers do not match the model's (missing, extra or reshaped)."""


class PrototypeMismatchError(FormatError):
    """The prototype values do not hash to what the artifact recorded."""



class DatasetError(PEMNError, ValueError):
    """A dataset is missing, incomplete, corrupt or hostile; the message names the file and the fix.

    Raised by the application's loaders (:mod:`pemn.training.data`, :mod:`pemn.training.text`, which re-export it
    from :mod:`pemn.training.errors`); defined here, beside the other pemn errors, so that ``pemn.DatasetError``
    needs no import from the core into the application."""
