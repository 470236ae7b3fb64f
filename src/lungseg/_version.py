"""The package version, in one place: pyproject.toml reads it, and so does every record."""

__version__ = "0.1.0"
