"""Helpers shared by the snapshot and train tests: a small real lake with tokens."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def build_test_lake(root: Path, schemes: tuple[str, ...] = ("remi_multitrack",), augment: int = 0):
    """magenta + miditok folders of the shared data, curated and tokenized in-process (workers=0)."""
    from corpus.curate import curate
    from corpus.engine import Engine
    from corpus.ingest import IngestConfig, ingest
    from corpus.lake import Lake
    from corpus.sources.folder import DirSource
    from corpus.tokenize.stage import tokenize

    lake = Lake(root)
    with lake.lock(), Engine(workers=0) as e:
        ingest(lake, DirSource(DATA / "midi" / "magenta", name="magenta", license="Apache-2.0"), e, IngestConfig())
        ingest(lake, DirSource(DATA / "midi" / "miditok", name="miditok", license="MIT"), e, IngestConfig())
        curate(lake, e)
        tokenize(lake, e, list(schemes))
        if augment:
            tokenize(lake, e, [schemes[0]], transpose=f"augment:{augment}")
    return lake
