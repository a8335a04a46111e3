"""Shared code of the next-movie recommendation pipeline."""
