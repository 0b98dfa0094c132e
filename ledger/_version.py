"""The package version (the same number as pyproject.toml's, checked by tests/test_layout.py)."""

__version__ = "0.1.0"
