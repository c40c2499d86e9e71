"""The synthetic corpus generator: distinct, parseable, realistic, deterministic, fast."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def gen():
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    from corpus.synth import Generator

    return Generator(DATA, seed=7)


@pytest.fixture(scope="module")
def pieces(gen) -> list[tuple[str, bytes]]:
    return list(gen.iter_bytes(400))


def test_all_parse_with_realistic_note_counts(pieces: list[tuple[str, bytes]]) -> None:
    from corpus.parse import analyse

    notes, tracks = [], []
    for name, data in pieces:
        res = analyse(data, "strict")  # valid SMF: not even a lenient warning
        notes.append(res["facts"]["n_notes"])
        tracks.append(res["facts"]["n_tracks"])
        assert res["facts"]["warnings"] == [], name
    med = float(np.median(notes))
    assert 150 <= med <= 5000, med  # real pieces, not toy loops or noise
    assert min(notes) >= 16 and max(notes) < 200_000
    assert max(tracks) > 1  # multitrack fixtures stay multitrack


def test_distinct_content_hashes(pieces: list[tuple[str, bytes]]) -> None:
    import symusic

    from corpus.curation.dedup import content_hash, content_hash_transposed

    scores = [symusic.Score.from_midi(d) for _, d in pieces]
    assert len({content_hash(s) for s in scores}) == len(pieces)
    assert len({content_hash_transposed(s) for s in scores}) == len(pieces)
    assert len({d for _, d in pieces}) == len(pieces)


def test_near_duplicate_clusters_do_not_collapse(pieces: list[tuple[str, bytes]]) -> None:
    import symusic

    from corpus.curation import dedup

    sigs = [dedup.signature(symusic.Score.from_midi(d)) for _, d in pieces[:200]]
    ids = [n for n, _ in pieces[:200]]
    res = dedup.cluster(
        ids,
        np.stack([s.vector for s in sigs]).astype(np.float32),
        [s.content_hash for s in sigs],
        transposed_hashes=[s.content_hash_transposed for s in sigs],
    )
    assert len(set(res.cluster_of.values())) >= 0.95 * len(ids)


def test_deterministic_per_seed_and_index(gen, pieces: list[tuple[str, bytes]], tmp_path: Path) -> None:
    from corpus.synth import Generator, generate

    assert list(gen.iter_bytes(20)) == pieces[:20]
    # piece i does not depend on how many are asked for, nor on where the run starts
    assert list(gen.iter_bytes(5, start=100)) == pieces[100:105]
    paths = generate(DATA, tmp_path / "a", 10, seed=7)
    assert [p.read_bytes() for p in paths] == [d for _, d in pieces[:10]]
    assert [p.name for p in paths] == [n for n, _ in pieces[:10]]
    other = Generator(DATA, seed=8)
    assert not {d for _, d in other.iter_bytes(20)} & {d for _, d in pieces[:20]}


def test_fast(gen) -> None:
    t0 = time.perf_counter()
    n = sum(1 for _ in gen.iter_bytes(300, start=1000))
    rate = n / (time.perf_counter() - t0) * 60
    assert rate > 2000, f"{rate:.0f} files per minute"  # measured ~40,000/min on this machine


def test_bad_arguments(tmp_path: Path) -> None:
    from corpus.synth import Generator

    with pytest.raises(ValueError, match="does not exist"):
        Generator(tmp_path / "nope")
    with pytest.raises(ValueError, match="no usable MIDI fixture"):
        Generator(tmp_path)
    with pytest.raises(ValueError, match="seed"):
        Generator(tmp_path, seed=-1)
