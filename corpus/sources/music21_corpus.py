"""The public-domain corpus that ships inside music21, converted to MIDI.

The embedded default source: Bach chorales, Palestrina masses, Irish/Scottish folk tunes
(Ryan's Mammoth Collection), Trecento and Monteverdi madrigals, taken round-robin so a
small ``--limit`` still gives a mix. Conversion (music21 parse + MIDI write, ~0.1-1 s a
piece) runs in the engine's workers; an item already in the lake is not converted again.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

from corpus.engine import Engine
from corpus.sources.base import SourceItem

# collection -> file suffixes taken (roman-numeral analyses and multi-tune opus files left out)
COLLECTIONS: dict[str, tuple[str, ...]] = {
    "bach": (".mxl",),
    "palestrina": (".krn",),
    "ryansMammoth": (".abc",),
    "trecento": (".xml",),
    "monteverdi": (".mxl",),
}
LICENSE = "PD"  # the works are in the public domain; see music21's corpus documentation
DEFAULT_LIMIT = 300


def corpus_paths(limit: int | None = None) -> list[str]:
    """Relative corpus paths, round-robin across the collections, deterministic."""
    from music21 import corpus

    by_coll: dict[str, list[str]] = {c: [] for c in COLLECTIONS}
    for p in corpus.getPaths():
        rel = str(p).split("/corpus/", 1)[-1]
        coll = rel.split("/", 1)[0]
        if coll in COLLECTIONS and rel.lower().endswith(COLLECTIONS[coll]):
            by_coll[coll].append(rel)
    ordered = [p for group in zip_longest(*(sorted(v) for v in by_coll.values())) for p in group if p]
    return ordered[:limit] if limit is not None else ordered


def convert(batch: list[str]) -> list[tuple[str, bytes | None, str | None]]:
    """Dask task: music21 corpus paths to MIDI bytes (or the error text)."""
    from music21 import corpus
    from music21.midi import translate

    out: list[tuple[str, bytes | None, str | None]] = []
    for rel in batch:
        try:
            score = corpus.parse(rel)
            if hasattr(score, "scores"):  # an Opus: its first score
                score = score.scores[0]
            out.append((rel, translate.music21ObjectToMidiFile(score).writestr(), None))
        except Exception as exc:  # noqa: BLE001 - any music21 failure is this item's reject reason
            out.append((rel, None, f"{type(exc).__name__}: {exc}"))
    return out


class Music21Source:
    name = "music21"

    def __init__(
        self, engine: Engine, limit: int | None = DEFAULT_LIMIT, skip: set[str] | None = None, batch: int = 4
    ) -> None:
        self.engine = engine
        self.limit = limit
        self.skip = skip or set()
        self.batch = batch
        self.total: int | None = None  # works to convert, known once iteration starts (a progress total)
        self.skipped = 0  # works of the selection already in the lake: not converted again
        self.unit = "works"
        self.converted = 0  # works converted so far in this run (progress moves while the parse waits)

    def __iter__(self) -> Iterator[SourceItem]:
        paths = corpus_paths(self.limit)
        todo = [p for p in paths if p not in self.skip]
        self.total, self.skipped = len(todo), len(paths) - len(todo)
        batches = [todo[i : i + self.batch] for i in range(0, len(todo), self.batch)]
        for _, results in self.engine.map_unordered(convert, batches):
            for rel, data, error in results:
                self.converted += 1
                meta: dict[str, Any] = {"music21_collection": rel.split("/", 1)[0]}
                if data is None:
                    yield SourceItem(
                        self.name, rel, None, rel.rsplit("/", 1)[-1], LICENSE, meta, ("convert_error", error or "")
                    )
                else:
                    yield SourceItem(self.name, rel, data, rel.rsplit("/", 1)[-1], LICENSE, meta)
