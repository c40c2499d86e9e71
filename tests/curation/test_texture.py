"""Texture measures and the mono-v1 rule, on hand-built scores and on real MIDI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curation.texture import (
    TEXTURE_RULE,
    legato_ticks,
    melody_tracks,
    piece_texture,
    retrigger_ends,
    track_texture,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TPQ = 480

# MeloForm's "raw" melodies (meloform/data/train/raw in microsoft/muzic) are the lead track of a
# Lakh file *before* MeloForm's own overlap filter (preprocess_lmd.py drops a note that starts
# within 2/3 of the previous note's length); these five still hold real chords and second
# voices, so they are polyphonic by any honest rule.
MELOFORM_POLYPHONIC = {
    "00a179902e6bb807d406fb7fb000b3f3.mid": "chords and arpeggios, 3-4 notes at once",
    "00ac90cbe93e3d1377929e8b4d6ad545.mid": "arpeggiated chords held over each other",
    "00b2a1f69f810527151f841da4c4fa54.mid": "held notes under a line, two-note chords",
    "00bab5b74531f5872d152f2274ec8a5e.mid": "broken chords held (pedal style)",
    "00bce26f0953aeb0bda7c9a1b89bdac8.mid": "an alternating held lower note (two voices)",
}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found: {path} (expects shared/data beside the checkout)")
    return path


def notes(*triples: tuple[int, int, int]) -> dict[str, np.ndarray]:
    arr = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    return {"time": arr[:, 0], "duration": arr[:, 1], "pitch": arr[:, 2]}


def score(*tracks: tuple[bool, list[tuple[int, int, int]]]) -> symusic.Score:
    s = symusic.Score(TPQ)
    for is_drum, ns in tracks:
        t = symusic.Track(name="", program=0, is_drum=is_drum)
        for time, dur, pitch in ns:
            t.notes.append(symusic.Note(time, dur, pitch, 80))
        s.tracks.append(t)
    return s


# --- hand-built edge cases -------------------------------------------------------------------


def test_touching_notes_do_not_overlap():
    tex = track_texture(notes((0, 480, 60), (480, 480, 62), (960, 480, 64)), TPQ)
    assert tex["max_polyphony"] == 1
    assert tex["share_poly"] == 0.0
    assert tex["is_monophonic"]


def test_short_release_tail_is_legato_not_polyphony():
    tail = legato_ticks(TPQ)  # 60 ticks: a 32nd note
    tex = track_texture(notes((0, 480 + tail, 60), (480, 480, 62)), TPQ)
    assert tex["max_polyphony"] == 2
    assert tex["max_polyphony_legato"] == 1
    assert tex["is_monophonic"]


def test_long_overlap_counts():
    # second note starts halfway through the first: a second voice half the time
    tex = track_texture(notes((0, 960, 60), (480, 960, 64)), TPQ)
    assert tex["max_polyphony_legato"] == 2
    assert tex["share_poly"] > 0.3
    assert not tex["is_monophonic"]


def test_chord():
    tex = track_texture(notes((0, 480, 60), (0, 480, 64), (0, 480, 67)), TPQ)
    assert (tex["max_polyphony"], tex["max_onset_polyphony"]) == (3, 3)
    assert not tex["is_monophonic"]


def test_one_double_stop_in_a_long_line_stays_monophonic():
    line = [(i * 240, 240, 60 + i % 5) for i in range(200)]
    line.append((0, 240, 72))  # a single two-note onset in 200 notes: 0.5 % of the time
    tex = track_texture(notes(*line), TPQ)
    assert tex["max_onset_polyphony"] == 2
    assert tex["is_monophonic"]


def test_zero_length_notes_count_one_tick():
    tex = track_texture(notes((0, 0, 60), (0, 0, 64)), TPQ)
    assert tex["max_polyphony"] == 2
    assert tex["max_onset_polyphony"] == 2


def test_empty_track():
    tex = track_texture(notes(), TPQ)
    assert tex["n_notes"] == 0 and not tex["is_monophonic"]


def test_bad_tpq_is_a_value_error():
    with pytest.raises(ValueError, match="tpq"):
        track_texture(notes((0, 1, 60)), 0)


def test_retrigger_ends_follow_music21_pairing():
    # FF8_Shuffle_or_boogie_pc.mid: pitch 56 struck at 202, 279, 280 (quarters), note-offs at
    # 279.83 and 280.49; symusic pairs first-in-first-out, so 280 would last until a later off
    tp = 96
    time = np.array([202, 279, 280]) * tp
    off = np.array([279.8333, 280.4896, 290.0]) * tp
    ends = retrigger_ends(time, (off - time).astype(np.int64), np.array([56, 56, 56]))
    assert (ends // 1).tolist() == [int(off[0]), int(off[0]), int(off[1])]


def test_retrigger_ends_keeps_distinct_pitches():
    t = np.array([0, 100])
    d = np.array([300, 300])
    assert retrigger_ends(t, d, np.array([60, 62])).tolist() == [300, 400]


def test_piece_empty_and_drums_only():
    assert piece_texture(symusic.Score(TPQ))[0]["texture"] == "empty"
    s = score((True, [(0, 10, 36), (0, 10, 42)]))
    piece, tracks = piece_texture(s)
    assert piece["texture"] == "drums_only"
    assert tracks[0]["texture"] == "drums"
    assert melody_tracks(s) == []


def test_piece_of_monophonic_tracks_that_alternate_is_monophonic():
    s = score((False, [(0, 480, 60)]), (False, [(480, 480, 67)]), (True, [(0, 10, 36)]))
    piece, tracks = piece_texture(s)
    assert piece["texture"] == "monophonic"
    assert [t["texture"] for t in tracks] == ["monophonic", "monophonic", "drums"]
    assert piece["rule"] == TEXTURE_RULE
    assert melody_tracks(s) == [0, 1]


def test_piece_of_monophonic_tracks_that_sound_together_is_polyphonic():
    s = score((False, [(0, 960, 60)]), (False, [(0, 960, 67)]))
    piece, _ = piece_texture(s)
    assert piece["texture"] == "polyphonic"
    assert piece["n_monophonic_tracks"] == 2


def test_drums_are_not_texture():
    # a drum track full of simultaneous hits does not make a melody piece polyphonic
    s = score((False, [(0, 480, 60), (480, 480, 62)]), (True, [(0, 10, 36), (0, 10, 38)]))
    assert piece_texture(s)[0]["texture"] == "monophonic"


# --- real files ------------------------------------------------------------------------------


def meloform_files() -> list[Path]:
    folder = DATA / "lakh_derived" / "meloform_melody"
    return sorted(folder.glob("*.mid")) if folder.exists() else []


@pytest.mark.parametrize("path", meloform_files(), ids=lambda p: p.name[:12])
def test_meloform_melodies(path: Path):
    piece, tracks = piece_texture(symusic.Score(str(path)))
    if path.name in MELOFORM_POLYPHONIC:
        assert piece["texture"] == "polyphonic", MELOFORM_POLYPHONIC[path.name]
        assert piece["share_poly"] > 0.1
    else:
        assert piece["texture"] == "monophonic", (piece, tracks)
        assert melody_tracks(symusic.Score(str(path))) == [0]


def test_meloform_folder_present():
    need(DATA / "lakh_derived" / "meloform_melody")
    assert len(meloform_files()) == 37


@pytest.mark.parametrize("folder", ["midi/muspy/Nottingham_recon", "mutopia/ftp"], ids=["nottingham", "mutopia"])
def test_multi_voice_collections_are_polyphonic(folder: str):
    files = sorted(need(DATA / folder).rglob("*.mid"))
    assert files
    for path in files:
        piece, _ = piece_texture(symusic.Score(str(path)))
        assert piece["texture"] == "polyphonic", path.name


def test_nottingham_melody_track_is_found():
    for path in sorted(need(DATA / "midi/muspy/Nottingham_recon").glob("*.mid"))[:10]:
        s = symusic.Score(str(path))
        assert melody_tracks(s) == [0], path.name  # tune on track 0, chords on track 1


def test_drum_only_file():
    s = symusic.Score(str(need(DATA / "midi/tonejs-midi/beat.mid")))
    assert piece_texture(s)[0]["texture"] == "drums_only"


def test_track_dicts_line_up_with_tracks():
    s = symusic.Score(str(need(DATA / "midi/magenta/example_is_drum.mid")))
    _, tracks = piece_texture(s)
    assert [t["index"] for t in tracks] == list(range(len(s.tracks)))
    assert [t["is_drum"] for t in tracks] == [t.is_drum for t in s.tracks]
    assert all(t["texture"] == "drums" for t in tracks if t["is_drum"])
