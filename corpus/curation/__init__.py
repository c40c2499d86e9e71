"""Curation steps: texture, key, transposition, duplicates."""
