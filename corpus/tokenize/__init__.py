"""Tokenization with miditok, presets, and the fast paths."""
