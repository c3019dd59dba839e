"""The package version: written once here (pyproject.toml reads it; artifacts and checkpoints record it)."""

__version__ = "0.1.0"
