"""The round-trip check keeps what a scheme encodes by design and still catches real loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.parse import Reject, analyse
from corpus.tokenize import presets, roundtrip
from corpus.tokenize.stage import encode_piece
from tests.conftest import midi_files


def _pieces(data_dir: Path) -> list[tuple[str, object]]:
    import symusic

    out = []
    for path in midi_files(data_dir / "midi"):
        data = path.read_bytes()
        try:
            analyse(data)
        except Reject:
            continue
        out.append((str(path.relative_to(data_dir)), symusic.Score.from_midi(data)))
    return out


def test_pertok_keeps_at_least_90_percent_of_what_remi_keeps(data_dir: Path) -> None:
    """PerTok quantizes durations when it encodes them (not in preprocessing): the reference
    is quantized the same way, so only real losses are rejected (was 65 of 192 pieces)."""
    remi, _ = presets.build("remi")
    pertok, _ = presets.build("pertok")
    pieces = _pieces(data_dir)
    remi_kept = pertok_kept = 0
    for _, score in pieces:
        if sum(encode_piece(remi, None, score)[2]) > 0:
            remi_kept += 1
        ids, multi, lengths = encode_piece(pertok, None, score)
        if sum(lengths) > 0 and roundtrip.check(pertok, score, ids, multi, lengths) == 1.0:
            pertok_kept += 1
    assert len(pieces) > 150
    assert pertok_kept >= 0.9 * remi_kept, (pertok_kept, remi_kept)


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
