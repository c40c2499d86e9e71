"""The round-trip check keeps what a scheme encodes by design and still catches real loss."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from corpus.bench import preset_batch
from corpus.parse import Reject, analyse
from corpus.tokenize import presets, roundtrip
from corpus.tokenize.stage import encode_piece
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
    res = preset_batch(scheme, pieces)
    return {pid: r[0] if r[0] == "ok" else r[1] for pid, _, r in res}


@pytest.mark.parametrize(
    "folders",
    [
        pytest.param(("lakh", "lakh_derived", "mutopia", "midi/miditok"), id="sample"),
        pytest.param(SHARED_FOLDERS, id="all", marks=pytest.mark.slow),
    ],
)
def test_pertok_keeps_at_least_90_percent_of_what_remi_keeps(folders: tuple[str, ...], data_dir: Path) -> None:
    """PerTok quantizes durations when it encodes them (the reference does the same), the
    matcher pairs notes of one pitch by onset window (not by sorted position), and miditok's
    time-signature bug is worked around: it kept 65 of 192 pieces, keeps all 270 now."""
    pieces = _parsed(data_dir, folders)
    remi = _kept("remi", pieces)
    pertok = _kept("pertok", pieces)
    remi_kept = {p for p, r in remi.items() if r == "ok"}
    pertok_kept = {p for p, r in pertok.items() if r == "ok"}
    assert len(pieces) > 100
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


def _two_track_time_signature_score() -> object:
    import symusic

    s = symusic.Score(480)
    for time, num in [(0, 4), (1920, 3), (3360, 4)]:
        s.time_signatures.append(symusic.TimeSignature(time, num, 4))
    a, b = symusic.Track(program=0), symusic.Track(program=1)
    for time in (0, 1920, 3360):
        a.notes.append(symusic.Note(time, 480, 60, 64))
    b.notes.append(symusic.Note(480, 480, 64, 64))
    s.tracks.extend([a, b])
    return s


def test_octuple_tracks_decode_with_their_own_time_signature_state(data_dir: Path) -> None:
    """miditok 3.1 carries Octuple's time-signature state from one track's sequence to the next;
    the check decodes each track afresh, so a correct encoding is not called lossy."""
    import symusic

    octuple, _ = presets.build("octuple")
    score = _two_track_time_signature_score()
    seqs = octuple.encode(score)
    assert [n.time for n in octuple.decode(seqs).tracks[1].notes] != [480]  # the bug, still there
    ids, multi, lengths = encode_piece(octuple, None, score)
    assert roundtrip.check(octuple, score, ids, multi, lengths) == 1.0
    real = symusic.Score(data_dir / "midi/skuldur-classical-piano-composer/Ff4-BattleLust.mid")
    ids, multi, lengths = encode_piece(octuple, None, real)
    assert roundtrip.check(octuple, real, ids, multi, lengths) == 1.0  # was 67.4 %


@pytest.mark.parametrize(
    ("scheme", "name", "cause"),
    [
        ("structured", "lakh_derived/meloform_melody/000e8ebb853db1823528cddee8dde81d.mid", "TimeShift cap"),
        ("structured", "midi/miditok/Maestro_4.mid", "no TimeShift value"),
        ("octuple", "midi/miditok/POP909_010.mid", "no note in the bar where 1/4 starts"),
        ("octuple", "midi/muspy/Nottingham_recon/ThursdayNight.mid", "old position unit"),
    ],
)
def test_lossy_rejects_name_the_cause(scheme: str, name: str, cause: str, data_dir: Path) -> None:
    import symusic

    assert _kept(scheme, [(name, (data_dir / name).read_bytes())])[name] == "lossy_encoding"
    tok, _ = presets.build(scheme)
    detail = roundtrip.lossy_detail(tok, symusic.Score(data_dir / name), 0.5)
    assert cause in detail, detail


@pytest.mark.parametrize(
    "folders",
    [
        pytest.param(("midi/muspy", "lakh_derived"), id="sample"),
        pytest.param(SHARED_FOLDERS, id="all", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("scheme", ["structured", "octuple"])
def test_a_known_cause_exactly_when_lossy(scheme: str, folders: tuple[str, ...], data_dir: Path) -> None:
    """The cause explains every lossy piece and no kept one."""
    import symusic

    tok, _ = presets.build(scheme)
    lossy = 0
    for name, data in _parsed(data_dir, folders):
        score = symusic.Score.from_midi(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids, multi, lengths = encode_piece(tok, None, score)
        if sum(lengths) == 0 or any("cannot tokenize entirely" in str(w.message) for w in caught):
            continue  # rejected as no_tokens / too_many_bars, not as lossy
        is_lossy = roundtrip.check(tok, score, ids, multi, lengths) < 1.0
        has_cause = bool(roundtrip.loss_cause(tok, score))
        assert is_lossy == has_cause, (name, is_lossy, roundtrip.loss_cause(tok, score))
        lossy += is_lossy
    assert lossy >= 5
