"""midicorpus: build, curate, tokenize and snapshot MIDI corpora for music ML."""

from __future__ import annotations

__version__ = "0.1.0"
