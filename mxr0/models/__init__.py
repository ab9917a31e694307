"""Thin builders around Hugging Face model classes (no model zoo of our own)."""
