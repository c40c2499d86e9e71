"""Duplicates on real files: hashes and vectors survive re-saves, reordering, tempo and transposition;
the Goldberg variations stay apart; the whole test-data set clusters only true copies."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curation import dedup
from corpus.curation.dedup import (
    DEFAULT_THRESHOLD,
    EMPTY_CONTENT_HASH,
    VECTOR_DIM,
    NearDupIndex,
    cluster,
    content_hash,
    content_hash_transposed,
    piece_vector,
    signature,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GOLDBERG = DATA / "mutopia" / "ftp" / "BachJS" / "BWV988"
MIDI_SUFFIXES = {".mid", ".midi", ".kar", ".rmi"}

# one notated piece, one performance, one band with drums, one pop piano, one five-track fugue
ALTER_FILES = {
    "goldberg-v01": "mutopia/ftp/BachJS/BWV988/bwv-988-v01/bwv-988-v01.mid",  # tpq 384
    "maestro-1": "midi/miditok/Maestro_1.mid",  # tpq 384, performed timing
    "i-gotta-feeling": "midi/miditok/I Gotta Feeling.mid",  # tpq 480, 7 tracks, drums
    "pop909-008": "midi/miditok/POP909_008.mid",  # tpq 480
    "bach-847": "midi/tonejs-midi/bach_847.mid",  # tpq 480, 5 tracks
}

# Clusters on the whole set whose members are not all byte-identical, each checked by hand
# (paths are the first of each set of byte-identical files, in sorted order).
REVIEWED_GROUPS = [
    # the jazz-soft C major scale, clean and with corrupt bytes that symusic skips: same 8 notes
    {
        "corrupt/jazz-soft-test-midi-files__test-corrupt-file-extra-byte.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-f1-xx.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-f2-xx-xx.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-f3-xx.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-f6.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-f8.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-fa.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-fb.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-fc.mid",
        "corrupt/jazz-soft-test-midi-files__test-illegal-message-fe.mid",
        "corrupt/jazz-soft-test-midi-files__test-non-midi-track.mid",
        "midi/jazz-soft-test-midi-files/test-c-major-scale.mid",
        "midi/jazz-soft-test-midi-files/test-running-status-metaevent.mid",
        "midi/jazz-soft-test-midi-files/test-smpte-offset.mid",
        "midi/jazz-soft-test-midi-files/test-vlq-4-byte.mid",
    },
    # WTC I prelude and fugue BWV 850 in six tracks (Lakh) and merged into one (Tone.js):
    # 11 overlapping notes end differently once in one track; vector 1.0
    {"lakh/lmd_full/2/297418ac1d6aeb58459a32a9d27d1b2d.mid", "midi/tonejs-midi/bwv-850.mid"},
    # BWV 846 as format 0 and format 1: same content hash
    {"lakh/lmd_full/9/99bf883b585d436d7fddd03d84c23073.mid", "lakh/lmd_full/f/f7ab9716a5e6f1ee971d0e788c58c5cb.mid"},
    # format 0 / 1 / 2 saves of the same two tracks: same content hash
    {
        "midi/jazz-soft-test-midi-files/test-2-tracks-type-0.mid",
        "midi/jazz-soft-test-midi-files/test-2-tracks-type-1.mid",
        "midi/jazz-soft-test-midi-files/test-2-tracks-type-2.mid",
    },
    # "Mary Had a Little Lamb" twice, other rhythm and ending: vector 0.86
    {"midi/jazz-soft-test-midi-files/test-karaoke-kar.mid", "midi/python-midi/mary.mid"},
    # the same chords spread over channels in four ways: same content hash
    {
        "midi/jazz-soft-test-midi-files/test-multichannel-chords-0.mid",
        "midi/jazz-soft-test-midi-files/test-multichannel-chords-1.mid",
        "midi/jazz-soft-test-midi-files/test-multichannel-chords-2.mid",
        "midi/jazz-soft-test-midi-files/test-multichannel-chords-3.mid",
    },
    # magenta's example_complex in three repository revisions: db351ea7 has the same notes,
    # e8f88888 reorders tracks and ends one note differently; vector 1.0
    {
        "midi/magenta/example_complex.mid",
        "midi/magenta/example_complex__db351ea7.mid",
        "midi/magenta/example_complex__e8f88888.mid",
    },
    # Fur Elise in two editions (1020 and 905 notes): vector 0.91
    {"midi/muspy/fur_elise.mid", "midi/muspy/fur_elise_2.mid"},
    # BWV 847 at tpq 480 in five tracks and at tpq 96 in one, some onsets a 1/96 step apart: 1.0
    {"midi/tonejs-midi/bach_847.mid", "midi/tonejs-midi/bwv-847.mid"},
    # Beethoven 7/II multitrack and single track: same content hash
    {"midi/tonejs-midi/symphony_7_2.mid", "midi/tonejs-midi/symphony_7_2_singletrack.mid"},
]


def need_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")


def load(rel: str) -> symusic.Score:
    need_data()
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"test file {path} is missing from the shared data")
    return symusic.Score.from_midi(path.read_bytes())


# --- alterations ------------------------------------------------------------------------------
def resave(score: symusic.Score, tpq: int | None = None) -> symusic.Score:
    """Through MIDI bytes, optionally at another resolution."""
    s = score.resample(tpq) if tpq else score
    return symusic.Score.from_midi(s.dumps_midi())


def reorder(score: symusic.Score) -> symusic.Score:
    s = score.copy()
    tracks = [t.copy() for t in s.tracks][::-1]
    s.tracks.clear()
    for t in tracks:
        s.tracks.append(t)
    return resave(s)


def retempo(score: symusic.Score) -> symusic.Score:
    """Same ticks everywhere, other tempo events (77 qpm, then 140 qpm from bar 5)."""
    s = score.copy()
    s.tempos.clear()
    s.tempos.append(symusic.Tempo(0, qpm=77.0))
    s.tempos.append(symusic.Tempo(16 * s.tpq, qpm=140.0))
    return resave(s)


def rename(score: symusic.Score) -> symusic.Score:
    s = score.copy()
    for i, t in enumerate(s.tracks):
        t.name = f"renamed {i}"
    return resave(s)


def transpose(score: symusic.Score, semitones: int) -> symusic.Score:
    s = score.copy()
    for t in s.tracks:
        if not t.is_drum:
            t.shift_pitch(semitones, inplace=True)
    return resave(s)


def everything(score: symusic.Score) -> symusic.Score:
    return transpose(rename(retempo(reorder(resave(score, 96)))), 3)


SAME_NOTES: dict[str, Callable[[symusic.Score], symusic.Score]] = {
    "resave-tpq96": lambda s: resave(s, 96),
    "resave-4x-tpq": lambda s: resave(s, 4 * s.tpq),
    "tracks-reversed": reorder,
    "tempo-changed": retempo,
    "tracks-renamed": rename,
}


def score_of(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# --- hashes and vectors under alterations ------------------------------------------------------
@pytest.mark.parametrize("kind", list(SAME_NOTES))
@pytest.mark.parametrize("name", list(ALTER_FILES))
def test_same_notes_same_hashes_and_vector(name: str, kind: str) -> None:
    original = load(ALTER_FILES[name])
    copy = SAME_NOTES[kind](original)
    assert content_hash(copy) == content_hash(original)
    assert content_hash_transposed(copy) == content_hash_transposed(original)
    assert score_of(piece_vector(copy), piece_vector(original)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("semitones", [3, -3])
@pytest.mark.parametrize("name", list(ALTER_FILES))
def test_transposition_only_moves_the_plain_hash(name: str, semitones: int) -> None:
    original = load(ALTER_FILES[name])
    copy = transpose(original, semitones)
    assert content_hash(copy) != content_hash(original)
    assert content_hash_transposed(copy) == content_hash_transposed(original)
    assert score_of(piece_vector(copy), piece_vector(original)) == pytest.approx(1.0, abs=1e-5)


def test_drums_do_not_move_with_the_transposed_hash() -> None:
    original = load(ALTER_FILES["i-gotta-feeling"])
    everything_moved = original.copy()
    everything_moved.shift_pitch(3, inplace=True)  # drums too: another drum kit, not a transposition
    assert content_hash_transposed(everything_moved) != content_hash_transposed(original)


@pytest.mark.parametrize("tpq", [120, 192])
@pytest.mark.parametrize("name", list(ALTER_FILES))
def test_lossy_resave_stays_above_threshold(name: str, tpq: int) -> None:
    """Other resolutions move notes by rounding; the hash may change, the vector stays close."""
    original = load(ALTER_FILES[name])
    s = score_of(piece_vector(resave(original, tpq)), piece_vector(original))
    assert s >= DEFAULT_THRESHOLD + 0.1, f"{name} re-saved at tpq {tpq} scores {s:.3f}"


@pytest.mark.parametrize("name", list(ALTER_FILES))
def test_altered_copy_joins_its_original(name: str) -> None:
    original = load(ALTER_FILES[name])
    copy = everything(original)
    sigs = [signature(original), signature(copy)]
    result = cluster(
        ["original", "copy"],
        [s.vector for s in sigs],
        [s.content_hash for s in sigs],
        transposed_hashes=[s.content_hash_transposed for s in sigs],
    )
    assert result.cluster_of == {"original": "copy", "copy": "copy"}  # smallest id without counts
    assert {p.reason for p in result.pairs} == {"transposed_hash", "near_dup"}


def test_vector_shape_norm_and_short_pieces() -> None:
    v = piece_vector(load(ALTER_FILES["goldberg-v01"]))
    assert v.dtype == np.float32 and v.shape == (VECTOR_DIM,)
    assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-5)
    # an 8-note scale and one pitch repeated 30 times are too little melody to compare
    for rel in ("midi/jazz-soft-test-midi-files/test-c-major-scale.mid", "midi/muspy/key-signatures.mid"):
        assert not piece_vector(load(rel)).any(), rel
    empty = symusic.Score(480)
    assert content_hash(empty) == EMPTY_CONTENT_HASH
    assert not piece_vector(empty).any()


def test_signature_matches_the_single_functions() -> None:
    score = load(ALTER_FILES["bach-847"])
    sig = signature(score)
    assert sig.content_hash == content_hash(score)
    assert sig.content_hash_transposed == content_hash_transposed(score)
    assert np.array_equal(sig.vector, piece_vector(score))
    assert sig.n_notes == score.note_num()
    assert sig.length_q == pytest.approx(score.end() / score.tpq, abs=1 / 96)


# --- Goldberg variations -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def goldberg() -> dict[str, symusic.Score]:
    need_data()
    files = sorted(GOLDBERG.glob("*/*.mid"))
    if len(files) != 30:
        pytest.skip(f"expected the 30 Goldberg variations under {GOLDBERG}, found {len(files)}")
    return {p.stem: symusic.Score.from_midi(p.read_bytes()) for p in files}


def test_goldberg_variations_stay_apart(goldberg: dict[str, symusic.Score]) -> None:
    ids = list(goldberg)
    vectors = np.stack([piece_vector(s) for s in goldberg.values()])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1.0)
    assert sims.max() < 0.4, f"closest variations score {sims.max():.3f}"  # measured 0.23
    result = cluster(ids, vectors, [content_hash(s) for s in goldberg.values()])
    assert result.n_clusters == 30


def test_goldberg_altered_copies_join_only_their_variation(goldberg: dict[str, symusic.Score]) -> None:
    changes: list[Callable[[symusic.Score], symusic.Score]] = [
        lambda s: resave(s, 96),
        lambda s: resave(s, 120),
        reorder,
        retempo,
        lambda s: transpose(s, 3),
        lambda s: transpose(s, -3),
        everything,
    ]
    ids, sigs = [], []
    for i, (name, score) in enumerate(goldberg.items()):
        ids += [name, f"{name}-copy"]
        sigs += [signature(score), signature(changes[i % len(changes)](score))]
    result = cluster(
        ids,
        [s.vector for s in sigs],
        [s.content_hash for s in sigs],
        transposed_hashes=[s.content_hash_transposed for s in sigs],
        n_notes=[s.n_notes for s in sigs],
        lengths=[s.length_q for s in sigs],
    )
    assert result.n_clusters == 30
    for name in goldberg:
        assert result.cluster_of[name] == result.cluster_of[f"{name}-copy"], name
    near = [p.score for p in result.pairs if p.reason == "near_dup"]
    assert min(near) >= 0.8


# --- the whole test-data set -------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_set() -> tuple[list[str], list[dedup.DedupSignature], dict[str, str]]:
    """Every file symusic reads (corrupt/ included), its signature and md5."""
    need_data()
    ids, sigs, md5 = [], [], {}
    for path in sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES):
        data = path.read_bytes()
        try:
            score = symusic.Score.from_midi(data)
        except RuntimeError:  # unreadable files are the parse stage's business
            continue
        if score.tpq <= 0:
            continue
        rel = path.relative_to(DATA).as_posix()
        ids.append(rel)
        sigs.append(signature(score))
        md5[rel] = hashlib.md5(data).hexdigest()
    return ids, sigs, md5


def test_whole_set_clusters_only_true_copies(corpus_set) -> None:
    ids, sigs, md5 = corpus_set
    result = cluster(
        ids,
        [s.vector for s in sigs],
        [s.content_hash for s in sigs],
        transposed_hashes=[s.content_hash_transposed for s in sigs],
        n_notes=[s.n_notes for s in sigs],
        lengths=[s.length_q for s in sigs],
    )
    first_with_bytes: dict[str, str] = {}
    for rel in ids:
        first_with_bytes.setdefault(md5[rel], rel)
    # byte-identical files always share a cluster
    for rel in ids:
        assert result.cluster_of[rel] == result.cluster_of[first_with_bytes[md5[rel]]], rel
    found = []
    for members in result.members.values():
        distinct = {first_with_bytes[md5[m]] for m in members}
        if len(distinct) > 1:
            found.append(distinct)
    missing = [g for g in REVIEWED_GROUPS if g not in found]
    unexpected = [sorted(g) for g in found if g not in REVIEWED_GROUPS]
    assert not missing, f"reviewed duplicates no longer clustered: {missing}"
    assert not unexpected, f"new clusters of non-identical files, review them: {unexpected}"


def test_pieces_without_notes_stay_alone(corpus_set) -> None:
    ids, sigs, _ = corpus_set
    empty = [i for i, s in zip(ids, sigs, strict=True) if s.n_notes == 0]
    assert len(empty) >= 3
    result = cluster(empty, [np.zeros(VECTOR_DIM, np.float32)] * len(empty), [EMPTY_CONTENT_HASH] * len(empty))
    assert result.n_clusters == len(empty)


# --- index -------------------------------------------------------------------------------------
def test_index_search_by_id_and_vector_and_round_trip(goldberg: dict[str, symusic.Score], tmp_path: Path) -> None:
    ids = list(goldberg)
    vectors = np.stack([piece_vector(s) for s in goldberg.values()])
    copy = piece_vector(transpose(goldberg["bwv-988-v07"], 3))
    ids.append("v07-transposed")
    vectors = np.vstack([vectors, copy])
    index = NearDupIndex.build(ids, vectors)
    assert index.kind == "flat" and len(index) == 31

    hits = index.search("bwv-988-v07", k=5)
    assert len(hits) == 5 and hits[0][0] == "v07-transposed" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert "bwv-988-v07" not in [h[0] for h in hits]
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert index.search(copy, k=1)[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(index.search("bwv-988-v01", k=100)) == 30

    folder = index.save(tmp_path / "neardup")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vector_config"]["scheme"] == dedup.VECTOR_SCHEME and "faiss" in meta["versions"]
    again = NearDupIndex.load(folder)
    assert again.piece_ids == ids
    assert again.search("bwv-988-v07", k=5) == hits
    assert dedup.similar(folder, "bwv-988-v07", k=5) == hits

    meta["vector_config"]["scheme"] = "something-else"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="something-else"):
        NearDupIndex.load(folder)


def test_index_refuses_bad_input() -> None:
    v = np.eye(4, VECTOR_DIM, dtype=np.float32)
    index = NearDupIndex.build(["a", "b", "c", "d"], v)
    with pytest.raises(KeyError, match="'zz'"):
        index.search("zz")
    with pytest.raises(ValueError, match="k must be"):
        index.search("a", k=0)
    with pytest.raises(ValueError, match="dimension 3"):
        index.search(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="threshold"):
        index.pairs(threshold=1.5)
    with pytest.raises(ValueError, match="k must be"):
        index.pairs(k=0)
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        NearDupIndex.load("/nonexistent/neardup")
    with pytest.raises(ValueError, match="3 vectors for 4"):
        NearDupIndex.build(["a", "b", "c", "d"], v[:3])
    with pytest.raises(ValueError, match="repeated"):
        NearDupIndex.build(["a", "a", "c", "d"], v)
    with pytest.raises(ValueError, match="kind"):
        NearDupIndex.build(["a", "b", "c", "d"], v, kind="hnsw")  # type: ignore[arg-type]
    assert index.search(np.zeros(VECTOR_DIM, np.float32)) == []


def planted(n: int, pairs: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random unit vectors where row 2i+1 has cosine 0.72..0.92 with row 2i for i < pairs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, VECTOR_DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(pairs):
        a = x[2 * i]
        noise = rng.standard_normal(VECTOR_DIM).astype(np.float32)
        noise -= (noise @ a) * a
        noise /= np.linalg.norm(noise)
        c = 0.72 + 0.2 * rng.random()
        x[2 * i + 1] = c * a + np.sqrt(1 - c * c) * noise
    return [f"p{i:05d}" for i in range(n)], x


def test_ivf_above_the_exact_limit_finds_the_same_pairs(tmp_path: Path) -> None:
    ids, x = planted(4000, 100)
    flat = NearDupIndex.build(ids, x)
    ivf = NearDupIndex.build(ids, x, exact_max_n=1000)
    assert (flat.kind, ivf.kind) == ("flat", "ivf")
    expected = {(2 * i, 2 * i + 1) for i in range(100)}
    assert {(i, j) for i, j, _ in flat.pairs()} == expected
    assert {(i, j) for i, j, _ in ivf.pairs()} == expected
    again = NearDupIndex.load(ivf.save(tmp_path / "ivf"))
    assert again.kind == "ivf" and again.search("p00000", k=1)[0][0] == "p00001"


# --- clustering rules --------------------------------------------------------------------------
def test_representative_rule_and_pair_reasons() -> None:
    base = np.zeros((6, VECTOR_DIM), np.float32)
    base[:, 0] = 1.0  # a, b, c share one vector
    base[3:, 0] = 0.0
    base[3, 1] = base[4, 2] = base[5, 3] = 1.0
    ids = ["c", "b", "a", "d", "e", "f"]
    hashes = ["h1", "h2", "h3", "h4", "h4", None]
    result = cluster(ids, base, hashes, n_notes=[10, 12, 12, 5, 5, 1], lengths=[8.0, 4.0, 8.0, 3.0, 3.0, 1.0])
    # most notes: b and a (12); then longest: a (8.0 quarters)
    assert result.cluster_of == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "f"}
    assert result.members == {"a": ["a", "b", "c"], "d": ["d", "e"], "f": ["f"]}
    assert {(p.a, p.b, p.reason) for p in result.pairs if p.reason == "content_hash"} == {("d", "e", "content_hash")}
    assert sum(p.reason == "near_dup" for p in result.pairs) == 3  # a-b, a-c, b-c
    assert result.n_clusters == 3


def test_threshold_decides_near_dup_pairs() -> None:
    ids, x = planted(20, 1)
    s = float(x[0] @ x[1])
    assert cluster(ids, x, [None] * 20, threshold=s - 0.01).cluster_of["p00001"] == "p00000"
    assert cluster(ids, x, [None] * 20, threshold=s + 0.01).cluster_of["p00001"] == "p00001"
    with pytest.raises(ValueError, match="3 entries for 20"):
        cluster(ids, x, ["h"] * 3)


# --- speed -------------------------------------------------------------------------------------
def test_vector_speed() -> None:
    score = load(ALTER_FILES["i-gotta-feeling"])  # 4945 notes, 7 tracks
    start = time.perf_counter()
    for _ in range(20):
        piece_vector(score)
    per_piece = (time.perf_counter() - start) / 20
    assert per_piece < 0.01, f"piece_vector took {per_piece * 1e3:.2f} ms"  # ~0.6 ms measured


@pytest.mark.slow
def test_cluster_20k_pieces_in_seconds() -> None:
    ids, x = planted(20_000, 500)
    start = time.perf_counter()
    result = cluster(ids, x, [None] * len(ids))
    elapsed = time.perf_counter() - start
    assert result.n_clusters == 20_000 - 500
    assert elapsed < 30, f"clustering 20k pieces took {elapsed:.1f} s"  # ~5 s on 2 shared cores


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_an_index_built_a_chunk_at_a_time_is_the_index_built_at_once(kind: str) -> None:
    """build_from (what curate does: the training sample, then the vectors a chunk at a time, read
    from the tables) gives the index of build over the whole matrix: the same vectors, lists and answers."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"p{i:05d}" for i in range(len(x))]
    asked: list[int] = []

    def rows_of(rows: np.ndarray) -> np.ndarray:
        asked.append(len(rows))
        return x[rows]

    whole = NearDupIndex.build(ids, x, kind=kind)
    chunked = NearDupIndex.build_from(ids, rows_of, 32, kind=kind, chunk=500)
    assert asked[-6:] == [500] * 6  # six chunks of 500 after the training sample
    assert chunked.kind == whole.kind == kind
    assert np.array_equal(chunked.index.reconstruct_n(0, 3000), whole.index.reconstruct_n(0, 3000))
    assert chunked.pairs_of(list(range(3000)), 0.5) == whole.pairs_of(list(range(3000)), 0.5)
    q = x[:50]
    assert np.array_equal(chunked._knn(q, 5)[1], whole._knn(q, 5)[1])


def test_an_ivf_index_built_with_spill_holds_one_shard_and_answers_as_the_index_held_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_from(spill=folder), what a first curate does: the IVF index is written a shard at a time
    as it is built and only its last shard stays in memory; its answers and pairs (as arrays and as
    tuples) are those of the index held whole, and saving it links the spilled shards."""
    from corpus.curation import dedup

    monkeypatch.setattr(dedup, "SHARD_N", 700)
    ids, x = planted(2500, 80, seed=5)
    asked: list[int] = []

    def rows_of(rows: np.ndarray) -> np.ndarray:
        asked.append(len(rows))
        return x[rows]

    whole = NearDupIndex.build(ids, x, exact_max_n=1000)
    spilled = NearDupIndex.build_from(ids, rows_of, VECTOR_DIM, exact_max_n=1000, chunk=300, spill=tmp_path / "sp")
    assert max(asked) <= 300  # the training sample too, a chunk at a time
    assert spilled.kind == "ivf" and len(spilled) == 2500
    assert spilled.index.ntotal == 400  # 700 + 700 + 700 on disk, the last 400 held
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == [f"shard-{i:04d}.faiss" for i in range(3)]
    assert np.array_equal(spilled._knn(x[:300], 9)[1], whole._knn(x[:300], 9)[1])
    assert np.array_equal(spilled.vectors_of([3, 2499, 1400]), whole.index.reconstruct_batch([3, 2499, 1400]))
    got = spilled.pair_arrays(np.arange(2500), 0.5)
    want = whole.pairs()
    assert [(int(a), int(b)) for a, b in zip(got[0], got[1], strict=True)] == [(i, j) for i, j, _ in want]
    assert got[2].tolist() == [s for _, _, s in want] and got[2].dtype == np.float64
    assert {(i, j) for i, j, _ in want} == {(2 * i, 2 * i + 1) for i in range(80)}
    folder = spilled.save(tmp_path / "saved")
    assert (folder / "shard-0001.faiss").stat().st_ino == (tmp_path / "sp" / "shard-0001.faiss").stat().st_ino
    assert np.array_equal(NearDupIndex.load(folder)._knn(x, 5)[1], whole._knn(x, 5)[1])
    spilled.close()


def test_pair_arrays_keep_each_pair_once_at_its_best_score_and_skip_zero_vectors() -> None:
    """A pair found from both of its pieces is one row (the lower row first); a zero vector pairs with nothing."""
    ids, x = planted(200, 10, seed=9)
    x[150] = 0.0
    x[151] = x[0]  # an exact copy of row 0: found from rows 0, 1 and 151
    index = NearDupIndex.build(ids, x)
    a, b, s = index.pair_arrays(np.arange(200), 0.5)
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert pairs == sorted(set(pairs)) and all(i < j for i, j in pairs)
    assert (0, 151) in pairs and (0, 1) in pairs and (1, 151) in pairs
    assert 150 not in set(a.tolist()) | set(b.tolist())
    assert s[pairs.index((0, 151))] == pytest.approx(1.0, abs=1e-5)
    assert index.pairs_of(list(range(200)), 0.5) == list(zip(a.tolist(), b.tolist(), s.tolist(), strict=True))


def test_a_saved_ivf_index_is_read_a_shard_at_a_time_and_answers_as_one_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IVF index saves as shards sharing its lists; a loaded one holds only the last shard and
    reads the others when it searches. Its answers, the vectors it returns, what it adds and what
    it saves again are those of the index held whole."""
    from corpus.curation import dedup

    monkeypatch.setattr(dedup, "SHARD_N", 700)
    ids, x = planted(3000, 80, seed=3)
    whole = NearDupIndex.build(ids[:2500], x[:2500], exact_max_n=1000)
    folder = whole.save(tmp_path / "v1")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["shards"] == [700, 700, 700, 400] and not (folder / "index.faiss").exists()
    loaded = NearDupIndex.load(folder)
    assert loaded.kind == "ivf" and len(loaded) == 2500
    assert loaded.index.ntotal == 400  # only the last shard is in memory
    q = x[:300]
    assert np.array_equal(loaded._knn(q, 9)[1], whole._knn(q, 9)[1])
    assert np.allclose(loaded._knn(q, 9)[0], whole._knn(q, 9)[0])
    assert np.array_equal(loaded.vectors_of([5, 2499, 1400, 700]), whole.index.reconstruct_batch([5, 2499, 1400, 700]))
    assert loaded.pairs_of(list(range(0, 2500, 7)), 0.5) == whole.pairs_of(list(range(0, 2500, 7)), 0.5)
    assert loaded.search("p00000", k=3) == whole.search("p00000", k=3)
    # a nightly run: new vectors go to the last shard; saved again, the old shards are linked, not rewritten
    assert loaded.add(ids[2500:], x[2500:]) == list(range(2500, 3000))
    whole.add(ids[2500:], x[2500:])
    again = NearDupIndex.load(loaded.save(tmp_path / "v2"))
    assert json.loads((tmp_path / "v2" / "meta.json").read_text())["shards"] == [700, 700, 700, 700, 200]
    assert (tmp_path / "v2" / "shard-0001.faiss").stat().st_ino == (folder / "shard-0001.faiss").stat().st_ino
    assert np.array_equal(again._knn(x, 5)[1], whole._knn(x, 5)[1])
    assert {(i, j) for i, j, _ in again.pairs()} == {(2 * i, 2 * i + 1) for i in range(80)}
    # the folder it was loaded from can go (curate publishes a new one): the open shards still read
    import shutil

    shutil.rmtree(folder)
    assert np.array_equal(loaded._knn(q, 9)[1], whole._knn(q, 9)[1])
    loaded.save(tmp_path / "v3")
    assert np.array_equal(NearDupIndex.load(tmp_path / "v3")._knn(q, 9)[1], whole._knn(q, 9)[1])
    for index in (loaded, again):
        index.close()


def test_an_ivf_index_saved_in_one_file_still_loads(tmp_path: Path) -> None:
    """Lakes curated before shards hold ``index.faiss`` and ``ids.json``: they load whole and save as
    shards and ``ids.arrow``."""
    import faiss

    ids, x = planted(1500, 10, seed=5)
    whole = NearDupIndex.build(ids, x, exact_max_n=1000)
    folder = whole.save(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    faiss.write_index(whole.index, str(old / "index.faiss"))
    (old / "ids.json").write_text(json.dumps(ids))  # ids as they were saved then
    meta = json.loads((folder / "meta.json").read_text())
    del meta["shards"]
    (old / "meta.json").write_text(json.dumps(meta))
    loaded = NearDupIndex.load(old)
    assert loaded.index.ntotal == 1500 and loaded.kind == "ivf"
    assert np.array_equal(loaded._knn(x[:50], 4)[1], whole._knn(x[:50], 4)[1])
    resaved = loaded.save(tmp_path / "resaved")
    assert "shards" in json.loads((resaved / "meta.json").read_text()) and (resaved / "ids.arrow").is_file()
    assert NearDupIndex.load(resaved).piece_ids == ids
