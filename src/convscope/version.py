"""The package version (one place: the package, the CLI and the atlas record it)."""

__version__ = "0.1.0"
