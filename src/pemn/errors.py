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


def __getattr__(name: str) -> type[PEMNError]:
    """``pemn.errors.DatasetError``: the application's (:mod:`pemn.training.errors`), imported on first use."""
    if name == "DatasetError":
        from pemn.training.errors import DatasetError

        return DatasetError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
