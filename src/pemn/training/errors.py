"""Errors of the application half. :class:`DatasetError` is defined in the core's :mod:`pemn.errors` (as
``pemn.DatasetError`` is public, and the core never imports the application) and re-exported here, where the
application's modules import it from."""

from __future__ import annotations

from pemn.errors import DatasetError

__all__ = ["DatasetError"]
