"""Errors of the application half (the core's are :mod:`pemn.errors`)."""

from __future__ import annotations

from pemn.errors import PEMNError

__all__ = ["DatasetError"]


class DatasetError(PEMNError, ValueError):
    """A dataset is missing, incomplete, corrupt or hostile; the message names the file and the fix."""
