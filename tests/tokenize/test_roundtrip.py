"""The round-trip check keeps what a scheme encodes by design and still catches real loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.parse import Reject, analyse
from corpus.tokenize import presets, roundtrip
from corpus.tokenize.stage import encode_piece, tokenize_batch
from tests.conftest import midi_files

SHARED_FOLDERS = ("midi", "lakh", "lakh_derived", "mutopia")


def _parsed(data_dir: Path, folders: tuple[str, ...] = SHARED_FOLDERS) -> list[tuple[str, bytes]]:
    out = []
    for folder in folders:
        for path in midi_files(data_dir / folder):
            data = path.read_bytes()
            try:
                analyse(data)
            except Reject:
                continue
            out.append((str(path.relative_to(data_dir)), data))
    return out


def _kept(scheme: str, pieces: list[tuple[str, bytes]]) -> dict[str, str]:
    """piece -> "ok" or its reject reason, through the stage's own batch task (verify as the preset says)."""
    tok, transform = presets.build(scheme)
    text = presets.tokenizer_json(tok, transform)
    res = tokenize_batch(
        [(name, data, [0]) for name, data in pieces],
        text,
        presets.tokenizer_hash(text),
        0,
        127,
        verify=presets.PRESETS[scheme].verify,
    )
    return {pid: r[0] if r[0] == "ok" else r[1] for pid, _, r in res}


def test_pertok_keeps_at_least_90_percent_of_what_remi_keeps(data_dir: Path) -> None:
    """On every shared folder. PerTok quantizes durations when it encodes them (the reference
    does the same), the matcher pairs notes of one pitch by onset window (not by sorted
    position), and miditok's time-signature bug is worked around: it kept 65 of 192 pieces."""
    pieces = _parsed(data_dir)
    remi = _kept("remi", pieces)
    pertok = _kept("pertok", pieces)
    remi_kept = {p for p, r in remi.items() if r == "ok"}
    pertok_kept = {p for p, r in pertok.items() if r == "ok"}
    assert len(pieces) > 250
    assert len(pertok_kept & remi_kept) >= 0.9 * len(remi_kept), sorted((p, r) for p, r in pertok.items() if r != "ok")


def test_pertok_check_still_catches_lost_and_moved_notes(data_dir: Path) -> None:
    import symusic

    pertok, _ = presets.build("pertok")
    score = symusic.Score(data_dir / "midi/jazz-soft-test-midi-files/test-c-major-scale.mid")
    ids, multi, lengths = encode_piece(pertok, None, score)
    assert roundtrip.check(pertok, score, ids, multi, lengths) == 1.0
    moved = score.copy()
    moved.tracks[0].notes[0].duration += score.tpq  # a quarter longer: no longer what decodes
    assert roundtrip.check(pertok, moved, ids, multi, lengths) < 1.0
    fewer = score.copy()
    fewer.tracks[0].notes.append(symusic.Note(0, score.tpq, 30, 64))  # a note the tokens lack
    assert roundtrip.check(pertok, fewer, ids, multi, lengths) < 1.0


@pytest.mark.parametrize("scheme", ["remi", "tsd"])
def test_reference_of_other_schemes_is_their_preprocessing(scheme: str, data_dir: Path) -> None:
    import symusic

    tok, _ = presets.build(scheme)
    score = symusic.Score(data_dir / "midi/jazz-soft-test-midi-files/test-c-major-scale.mid")
    assert roundtrip.reference(tok, score) == tok.preprocess_score(score.copy())


def test_near_simultaneous_notes_of_one_pitch_pair_by_onset_window(data_dir: Path) -> None:
    """Two notes of one pitch whose onsets are within the tolerance can decode in the other
    order (PerTok's microtiming bins): they still match, a wrong duration still does not."""
    import symusic

    def score(notes: list[tuple[int, int]]) -> symusic.Score:
        s = symusic.Score(480)
        s.tracks.append(symusic.Track())
        for time, duration in notes:
            s.tracks[0].notes.append(symusic.Note(time, duration, 36, 100))
        return s

    ref = score([(480, 240), (482, 120)])  # a quarter's flam: the later one is shorter
    assert roundtrip.match_rate(ref, score([(480, 120), (480, 240)])) == 1.0
    assert roundtrip.match_rate(ref, score([(480, 120), (480, 120)])) == 0.5
    assert roundtrip.match_rate(ref, score([(480, 240)])) == 0.5

    pertok, _ = presets.build("pertok")  # a real piece where position pairing called 0.6% lost
    blue_sky = symusic.Score(data_dir / "midi/miditok/Mr. Blue Sky.mid")
    ids, multi, lengths = encode_piece(pertok, None, blue_sky)
    assert roundtrip.check(pertok, blue_sky, ids, multi, lengths) == 1.0
