"""The package version: the one source that pyproject.toml, ``--version`` and reports read."""

__version__ = "0.2.0.dev0"
