"""The package version (a base module: the command shows it, the package exports it)."""

__version__ = "0.1.0"
