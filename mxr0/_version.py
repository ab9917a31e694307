"""mxr0's version (also `pyproject.toml`'s ``[project] version``; a test keeps the two equal)."""

__version__ = "0.1.0"
