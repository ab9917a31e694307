"""mxr0: an open training stack for radiology vision-language models."""
__version__ = "0.1.0"
