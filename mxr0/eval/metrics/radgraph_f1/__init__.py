"""Hugging Face `evaluate` module folder (see README.md); a package only so that it ships with mxr0."""
