"""Errors of the application half. :class:`DatasetError` is defined in the core's :mod:`pemn.errors` (as
``pemn.DatasetError`` is public, and the core never imports the application) and re-exported here, where the
application's modules import it from. :class:`OptionError` is a request the caller gave that cannot be run (the
command line's exit code 2)."""

from __future__ import annotations

from pemn.errors import DatasetError

__all__ = ["DatasetError", "OptionError"]


class OptionError(ValueError):
    """A request that cannot be run as given: an option that contradicts the model file or names nothing, a folder
    where a file is wanted, a kind of model the command does not handle (``pemn``'s exit code 2, as a mistyped
    flag)."""
