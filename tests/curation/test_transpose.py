"""Transposition: drums stay, round trips are exact, out-of-range shifts are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curation.key import declared_key, estimate_key
from corpus.curation.transpose import (
    REASON_OUT_OF_RANGE,
    TransposeSkip,
    augment_shifts,
    normalize_shift,
    transpose_score,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

FILES = [
    "midi/magenta/example_is_drum.mid",  # 40 tracks, 2 of them drums
    "lakh/lmd_full/c/ca5dcb93fea9fd04337e605d85e23058.mid",  # Lakh, drums
    "midi/miditok/Funkytown.mid",
    "midi/muspy/Nottingham_recon/OhSusanna.mid",
    "mutopia/ftp/BachJS/BWV988/bwv-988-v07/bwv-988-v07.mid",
    "lakh_derived/meloform_melody/000a30cffe45faaca2d0b919d900961c.mid",
    "midi/muspy/fur_elise.mid",
    "midi/tonejs-midi/bach_847.mid",
]


def load(rel: str) -> symusic.Score:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"test data not found: {path} (expects shared/data beside the checkout)")
    return symusic.Score(str(path))


def note_arrays(track) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in track.notes.numpy().items()}


@pytest.mark.parametrize("rel", FILES[:2], ids=["example_is_drum", "lakh_ca5dcb93"])
def test_drums_untouched_pitched_moved(rel: str):
    score = load(rel)
    assert any(t.is_drum for t in score.tracks)
    out = transpose_score(score, 3)
    assert isinstance(out, symusic.Score)
    for before, after in zip(score.tracks, out.tracks):
        a, b = note_arrays(before), note_arrays(after)
        np.testing.assert_array_equal(a["time"], b["time"])
        np.testing.assert_array_equal(a["duration"], b["duration"])
        shift = 0 if before.is_drum else 3
        np.testing.assert_array_equal(a["pitch"].astype(int) + shift, b["pitch"].astype(int))


@pytest.mark.parametrize("shift", [-5, -1, 1, 6])
@pytest.mark.parametrize("rel", FILES, ids=[Path(f).stem[:16] for f in FILES])
def test_round_trip_is_identical(rel: str, shift: int):
    score = load(rel)
    there = transpose_score(score, shift)
    if isinstance(there, TransposeSkip):
        pytest.skip(f"{rel}: {there.detail}")
    back = transpose_score(there, -shift)
    assert isinstance(back, symusic.Score)
    assert len(back.tracks) == len(score.tracks)
    for a, b in zip(score.tracks, back.tracks):
        assert a.notes == b.notes
        assert (a.is_drum, a.program) == (b.is_drum, b.program)
    assert [(k.time, k.key, k.tonality) for k in back.key_signatures] == [
        (k.time, k.key, k.tonality) for k in score.key_signatures
    ]


def test_source_score_is_not_modified():
    score = load(FILES[2])
    before = [note_arrays(t)["pitch"] for t in score.tracks]
    transpose_score(score, 2)
    assert all((b == note_arrays(t)["pitch"]).all() for b, t in zip(before, score.tracks))


def test_out_of_range_is_skipped_with_reason():
    score = load(FILES[1])
    top = max(int(t.notes.numpy()["pitch"].max()) for t in score.tracks if not t.is_drum)
    res = transpose_score(score, 128 - top)
    assert isinstance(res, TransposeSkip)
    assert not res
    assert res.reason == REASON_OUT_OF_RANGE
    assert f"shift +{128 - top}" in res.detail and "[0, 127]" in res.detail
    assert res.semitones == 128 - top
    # a tighter custom range refuses what 0..127 would allow
    narrow = transpose_score(score, 0, low=48, high=84)
    assert isinstance(narrow, TransposeSkip) and "[48, 84]" in narrow.detail


def test_drums_do_not_count_for_range():
    s = symusic.Score(480)
    drum = symusic.Track(name="", program=0, is_drum=True)
    drum.notes.append(symusic.Note(0, 10, 127, 100))  # would overflow if it were moved
    s.tracks.append(drum)
    mel = symusic.Track(name="", program=0, is_drum=False)
    mel.notes.append(symusic.Note(0, 480, 60, 100))
    s.tracks.append(mel)
    out = transpose_score(s, 5)
    assert isinstance(out, symusic.Score)
    assert out.tracks[0].notes[0].pitch == 127 and out.tracks[1].notes[0].pitch == 65


@pytest.mark.parametrize(
    "kwargs",
    [
        {"semitones": 1.5},
        {"semitones": True},
        {"semitones": 1, "low": 90, "high": 10},
        {"semitones": 1, "high": 128},
    ],
)
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        transpose_score(symusic.Score(480), **kwargs)


def test_key_signatures_move_with_the_notes():
    s = symusic.Score(480)
    s.key_signatures.append(symusic.KeySignature(0, 1, 0))  # G major
    s.key_signatures.append(symusic.KeySignature(960, -3, 1))  # C minor
    out = transpose_score(s, 2)
    assert [(k.key, k.tonality) for k in out.key_signatures] == [(3, 0), (-1, 1)]  # A, D minor
    assert declared_key(out).tonic == "A"


def test_normalize_shift_all_keys():
    for mode, target in (("major", 0), ("minor", 9)):
        for pc in range(12):
            s = normalize_shift(pc, mode)
            assert -6 <= s <= 5
            assert (pc + s) % 12 == target
    assert normalize_shift(7, "major") == 5  # G -> C: up a fourth, not down a fifth
    assert normalize_shift(6, "major") == -6  # F#: the -6..+5 range decides
    assert normalize_shift(4, "minor") == 5  # E minor -> A minor
    with pytest.raises(ValueError, match="mode"):
        normalize_shift(0, "dorian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tonic_pc"):
        normalize_shift(12, "major")


def test_augment_shifts():
    assert augment_shifts(3) == [-3, -2, -1, 1, 2, 3]
    assert augment_shifts(0) == []
    for bad in (-1, 13, 2.0):
        with pytest.raises(ValueError, match="k must be"):
            augment_shifts(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("rel", FILES, ids=[Path(f).stem[:16] for f in FILES])
def test_normalization_reaches_c_major_or_a_minor(rel: str):
    score = load(rel)
    k = estimate_key(score)
    assert k is not None
    shift = normalize_shift(k.tonic_pc, k.mode)
    out = transpose_score(score, shift)
    if isinstance(out, TransposeSkip):
        pytest.skip(out.detail)
    k2 = estimate_key(out)
    assert (k2.tonic_pc, k2.mode) == ((0, "major") if k.mode == "major" else (9, "minor"))
    assert k2.correlation == pytest.approx(k.correlation, abs=1e-12)


def test_normalize_follows_the_default_key_not_music21s(arrangements_dir: Path, tmp_path: Path) -> None:
    """tokenize --transpose normalize shifts by the default key (key_*), not by key_music21_*.

    pop909 089 and 090: the human labels (F# minor, G minor) are what the default key finds;
    music21's estimate (D major, C minor) would shift them elsewhere.
    """
    from corpus.curate import curate
    from corpus.engine import Engine
    from corpus.ingest import IngestConfig, ingest
    from corpus.lake import Lake
    from corpus.sources.base import SourceItem
    from corpus.tokenize.stage import tokenize

    lake = Lake(tmp_path / "lake")
    items = [
        SourceItem(source="pop", uri=s, data=(arrangements_dir / s / f"{s}.mid").read_bytes(), name=s)
        for s in ("089", "090")
    ]
    with lake.lock("test"), Engine(workers=0) as e:
        ingest(lake, items, e, IngestConfig())
        curate(lake, e)
        tokenize(lake, e, ["remi"], transpose="normalize", min_key_confidence=0.0)
    con = lake.connect()
    try:
        rows = con.execute(
            "SELECT p.name, f.key_tonic_pc, f.key_mode, f.key_music21_tonic_pc, f.key_music21_mode, t.transpose "
            "FROM pieces p JOIN features f USING (piece_id) JOIN tokens t USING (piece_id) ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == ["089", "090"]
    labels = {"089": (6, "minor"), "090": (7, "minor")}  # key_audio.txt: F#:min, G:min
    for name, pc, mode, m21_pc, m21_mode, shift in rows:
        assert (pc, mode) == labels[name]
        assert shift == normalize_shift(pc, mode)
        assert shift != normalize_shift(m21_pc, m21_mode)
