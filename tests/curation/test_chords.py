"""Chord labels: the measure on built notes, accuracy against people on POP909, and the SQL over it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus import bench_chords
from corpus.curation import chords

TPQ = 480
# root pc, third, fifth (+ seventh) above the root, in C major: the loop I-V-vi-IV
LOOP = [(0, "maj"), (7, "maj"), (9, "min"), (5, "maj")]
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)


def _score(bars: list[tuple[int, str]], tonic: int = 0, inversion: bool = False, drums: bool = False) -> symusic.Score:
    """Block chords (one per bar of 4/4), a bass on the root and a melody with a neighbour tone."""
    s = symusic.Score(TPQ)
    s.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    piano, bass, melody = symusic.Track("p", 0, False), symusic.Track("b", 33, False), symusic.Track("m", 73, False)
    bar = 4 * TPQ
    for i, (root, q) in enumerate(bars):
        t = i * bar
        r = (root + tonic) % 12
        tones = [r + iv for iv in chords.QUALITIES[q]]
        if inversion and i % 2:
            tones = tones[1:] + [tones[0] + 12]
        for p in tones:
            piano.notes.append(symusic.Note(t, bar, 60 + p, 80))
        bass.notes.append(symusic.Note(t, bar, 36 + r, 90))
        # melody: chord tones, and the scale tone below the top (an eighth) on the third beat
        top = 72 + tones[-1] % 12
        below = top - 1 if (top - 1 - tonic) % 12 in MAJOR_SCALE else top - 2
        for on, dur, p in ((0, 480, top), (480, 480, 72 + r), (960, 240, below), (1200, 240, top), (1440, 480, 72 + r)):
            melody.notes.append(symusic.Note(t + on, dur, p, 100))
    s.tracks.extend([piano, bass, melody])
    if drums:
        d = symusic.Track("d", 0, True)
        for k in range(len(bars) * 4):
            d.notes.append(symusic.Note(k * TPQ, TPQ // 4, 38 + k % 3, 100))  # D, D#, E on channel 10
        s.tracks.append(d)
    return s


def _labels(score: symusic.Score) -> list[str]:
    start, end, pitch = chords.pitched_notes(score)
    bounds = chords.beat_bounds(score, start)
    return [chords.label(x) for x in chords.chords_from_notes(start, end, pitch, bounds)]


def test_block_chords_are_named_with_their_bass_and_drums_are_ignored() -> None:
    bars = [(0, "maj"), (9, "min7"), (2, "min"), (7, "7"), (11, "dim"), (0, "sus4"), (0, "maj")]
    assert _labels(_score(bars, drums=True)) == ["C:maj", "A:min7", "D:min", "G:7", "B:dim", "C:sus4", "C:maj"]
    # first inversions: the bass track keeps the root; without it the lowest sounding pitch is the third
    s = _score([(0, "maj"), (5, "maj")], inversion=True)
    del s.tracks[1]
    assert _labels(s) == ["C:maj", "F:maj/A"]


def test_beat_chroma_weights_duration_inside_each_beat() -> None:
    bounds = np.array([0, 480, 960])
    chroma, bass = chords.beat_chroma(np.array([0, 240, 0]), np.array([720, 480, 960]), np.array([60, 64, 43]), bounds)
    assert chroma[0, 0] == 480 and chroma[1, 0] == 240 and chroma[0, 4] == 240 and chroma[:, 7].tolist() == [480, 480]
    assert bass.tolist() == [43, 43]
    # an empty beat and a beat with one pitch class are N
    segs = chords.chords_from_notes(np.array([960]), np.array([1440]), np.array([60]), np.array([0, 480, 960, 1440]))
    assert [chords.label(x) for x in segs] == ["N"]


def test_beat_grid_follows_shifted_onsets_but_keeps_written_grids() -> None:
    # POP909 001: the annotated beats fall ~0.08 beat after the MIDI grid; ours must follow them
    d = Path(__file__).resolve().parents[2].parent / "shared" / "arrangements" / "001"
    if not d.is_dir():
        pytest.skip("arrangements not found")
    score = symusic.Score(str(d / "001.mid"))
    start, _, _ = chords.pitched_notes(score)
    secs = chords.tick_seconds(score, chords.beat_bounds(score, start))
    ref = bench_chords.read_beats(d / "beat_midi.txt")
    dist = np.abs(ref[:, None] - secs[None, :]).min(axis=1)
    assert np.median(dist) < 0.03
    # a score entered on the grid (every subdivision as full as the beat) keeps phase 0
    sixteenths = np.arange(0, 480 * 32, 120)
    assert chords.beat_phase(sixteenths, 480) == 0
    # beats plus half as many off-beats, all 200 ticks late: the grid moves by 200
    late = np.concatenate([np.arange(0, 480 * 32, 480), np.arange(240, 480 * 16, 480)]) + 200
    assert chords.beat_phase(late, 480) == 200


def test_roman_numerals_in_major_and_minor() -> None:
    assert [chords.degree(r, q, 0, "major") for r, q in LOOP] == ["I", "V", "vi", "IV"]
    assert [chords.degree(r, q, 9, "minor") for r, q in [(9, "min"), (5, "maj"), (7, "maj"), (4, "7"), (8, "dim")]] == [
        "i",
        "VI",
        "VII",
        "V",
        "#viio",
    ]
    assert chords.degree(10, "maj", 0, "major") == "bVII"
    assert chords.roman(7, "7", 0, "major") == "V7"
    assert chords.roman(11, "hdim7", 0, "major") == "viih7"
    assert chords.degree(None, "N", 0, "major") is None and chords.degree(0, "maj", None, None) is None


def test_most_common_progression_counts_runs_of_four_degrees() -> None:
    seq = ["I", "I", "V", "vi", None, "IV"] * 3 + ["ii", "V", "I"]
    out = chords.summarize(seq, 40, 20)
    assert out["chord_progression"] == "I-V-vi-IV" and out["chord_progression_count"] == 3
    assert chords.summarize(["I", "V"], 8, 2)["chord_progression"] is None


@pytest.mark.parametrize("songs", [("002", "004", "006", "008")], ids=["pop909-even"])
def test_accuracy_floor_against_human_labels(arrangements_dir: Path, songs: tuple[str, ...]) -> None:
    """Held-out songs (parameters were chosen on the odd ones): root and majmin per beat >= 0.85."""
    pairs = [p for n in songs for p in bench_chords.song_beats(arrangements_dir / n)]
    got = bench_chords.score_beats(pairs)
    assert got["beats"] > 1000
    assert got["root"] >= 0.85 and got["majmin"] >= 0.85, got


def test_harte_labels_and_majmin_scoring() -> None:
    assert bench_chords.parse_label("F#:maj7/5") == (6, "maj7")
    assert bench_chords.parse_label("Bb:sus4(b7)") == (10, "sus4(b7)")
    assert bench_chords.parse_label("N") == (None, "N")
    pairs = [((0, "maj"), (0, "7")), ((0, "min7"), (0, "maj")), ((0, "sus4"), (0, "maj")), ((None, "N"), (None, "N"))]
    got = bench_chords.score_beats(pairs)
    # maj vs our 7: same majmin class; min7 vs maj: wrong; sus4 left out of majmin; N = N counts
    assert got["majmin_beats"] == 3 and got["majmin"] == round(2 / 3, 4)
    assert got["root"] == 1.0 and got["vocab"] == 0.25


def test_pieces_whose_most_common_progression_is_i_v_vi_iv(
    tmp_path: Path, data_dir: Path, arrangements_dir: Path
) -> None:
    from corpus.curate import curate
    from corpus.engine import Engine
    from corpus.ingest import IngestConfig, ingest
    from corpus.lake import Lake
    from corpus.sources.folder import DirSource

    src = tmp_path / "src"
    src.mkdir()
    # the loops end on a cadence: a bare I-V-vi-IV loop is as much in the key of IV to a key profile
    cadence = [(2, "min"), (7, "7"), (0, "maj")]
    _score(LOOP * 4 + cadence, tonic=0).dump_midi(src / "loop_c.mid")
    _score(LOOP * 3 + cadence, tonic=2, inversion=True, drums=True).dump_midi(src / "loop_d.mid")
    _score([(0, "maj"), (5, "maj"), (7, "maj"), (0, "maj")] * 4, tonic=7).dump_midi(src / "cadence_g.mid")
    _score([LOOP[2], LOOP[3], LOOP[0], LOOP[1]] * 4 + cadence, tonic=0).dump_midi(src / "rotated.mid")  # vi-IV-I-V
    for n in ("002", "004"):  # POP909 songs whose human labels' most common progression is another
        shutil.copy(arrangements_dir / n / f"{n}.mid", src / f"pop909_{n}.mid")
    lake = Lake(tmp_path / "lake")
    with lake.lock("test"), Engine(workers=1) as e:
        ingest(lake, DirSource(src, name="test"), e, IngestConfig())
        s = curate(lake, e)
    assert s.failed == 0 and s.analysed == 6
    con = lake.connect()
    try:
        hits = con.execute(
            "SELECT p.name FROM features f JOIN pieces p USING (piece_id) "
            "WHERE f.chord_progression = 'I-V-vi-IV' ORDER BY 1"
        ).fetchall()
        labels = con.execute(
            "SELECT string_agg(c.label, ' ' ORDER BY c.chord_index) FROM chords c JOIN pieces p USING (piece_id) "
            "WHERE p.name = 'loop_c.mid'"
        ).fetchone()[0]
        (n_pieces,) = con.execute("SELECT count(DISTINCT piece_id) FROM chords").fetchone()
    finally:
        con.close()
    assert [h[0] for h in hits] == ["loop_c.mid", "loop_d.mid"]
    assert labels == " ".join(["C:maj G:maj A:min F:maj"] * 4 + ["D:min G:7 C:maj"])
    assert n_pieces == 6


def test_bench_chords_without_arrangements_is_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "data").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "bench", "--chords", "--files", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        timeout=120,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--chords needs the POP909 arrangements" in r.stderr and len(r.stderr.strip().splitlines()) == 1
