"""Every real file of shared/data through the parser: each outcome asserted exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.parse import Reject, analyse, check_structure
from corpus.reasons import REASONS, WARNINGS
from tests.conftest import DATA, midi_files

# every file that does not come out ok, with its reason code
EXPECTED_REJECTS = {
    "corrupt/jazz-soft-test-midi-files__test-corrupt-file-missing-byte.mid": "truncated",
    "corrupt/jazz-soft-test-midi-files__test-empty-file.mid": "empty_file",
    "corrupt/jazz-soft-test-midi-files__test-illegal-message-all.mid": "bad_status_byte",
    "corrupt/jazz-soft-test-midi-files__test-illegal-message-f4.mid": "bad_status_byte",
    "corrupt/jazz-soft-test-midi-files__test-illegal-message-f5.mid": "bad_status_byte",
    "corrupt/jazz-soft-test-midi-files__test-illegal-message-f9.mid": "bad_status_byte",
    "corrupt/jazz-soft-test-midi-files__test-illegal-message-fd.mid": "bad_status_byte",
    "corrupt/jazz-soft-test-midi-files__test-not-a-midi-file.mid": "not_midi",
    "corrupt/miditok__ValueError_Control168.mid": "bad_data_byte",
    "corrupt/muspy__negative-ticks-per-beat.mid": "smpte_division",
    "corrupt/muspy__ticks-per-beat-480.mid": "no_tracks",
    "corrupt/muspy__type2.mid": "midi_format_2",
    "corrupt/muspy__zero-ticks-per-beat.mid": "zero_division",
    "corrupt/python-midi__mary.mid": "bad_running_status",
    "corrupt/symusic__Issue104_Bizarre_Love_Triangle2.mid": "truncated",
    "midi/jazz-soft-test-midi-files/test-2-tracks-type-2.mid": "midi_format_2",
    "midi/jazz-soft-test-midi-files/test-empty.mid": "no_notes",
    "midi/jazz-soft-test-midi-files/test-silence-all-notes-off.mid": "no_notes",
    "midi/miditok/empty.mid": "no_notes",
    "midi/muspy/empty.mid": "no_notes",
    "midi/muspy/multiple-copyrights.mid": "no_notes",
}

# kept files that violate the spec, with the warnings they must carry (lenient policy)
EXPECTED_WARNINGS = {
    "corrupt/jazz-soft-test-midi-files__test-corrupt-file-extra-byte.mid": ["trailing_bytes"],
    "corrupt/jazz-soft-test-midi-files__test-non-midi-track.mid": ["unknown_chunk"],
    "corrupt/jazz-soft-test-midi-files__test-running-status-sysex.mid": ["running_status_after_sysex"],
    **{
        f"corrupt/jazz-soft-test-midi-files__test-illegal-message-{x}.mid": ["illegal_status_accepted"]
        for x in ("f1-xx", "f2-xx-xx", "f3-xx", "f6", "f8", "fa", "fb", "fc", "fe")
    },
}


def _all_files() -> list[Path]:
    return midi_files(DATA) if DATA.is_dir() else []


@pytest.mark.parametrize("path", _all_files(), ids=lambda p: str(p.relative_to(DATA)))
def test_every_real_file_has_its_outcome(path: Path, data_dir: Path) -> None:
    rel = str(path.relative_to(data_dir))
    data = path.read_bytes()
    if rel in EXPECTED_REJECTS:
        with pytest.raises(Reject) as info:
            analyse(data)
        assert info.value.reason == EXPECTED_REJECTS[rel], info.value.detail
        assert info.value.reason in REASONS
        assert info.value.detail
        return
    result = analyse(data)
    facts = result["facts"]
    assert facts["n_notes"] > 0
    assert facts["n_notes"] == sum(t["n_notes"] for t in result["tracks"])
    assert all(w in WARNINGS for w in facts["warnings"])
    if rel in EXPECTED_WARNINGS:
        assert set(EXPECTED_WARNINGS[rel]) <= set(facts["warnings"])


def test_facts_agree_with_provenance_table(data_dir: Path) -> None:
    """symusic's note and tpq counts recorded in PROVENANCE.tsv match our facts."""
    import csv

    rows = list(csv.DictReader(open(data_dir / "PROVENANCE.tsv"), delimiter="\t"))
    checked = 0
    for row in rows:
        if row["symusic_ok"] != "True" or row["file"] in EXPECTED_REJECTS:
            continue
        facts = analyse((data_dir / row["file"]).read_bytes())["facts"]
        assert facts["n_notes"] == int(row["sym_notes"]), row["file"]
        assert facts["ticks_per_quarter"] == int(row["sym_tpq"]), row["file"]
        checked += 1
    assert checked > 100


def test_strict_policy_rejects_spec_violations(data_dir: Path) -> None:
    for rel in EXPECTED_WARNINGS:
        with pytest.raises(Reject) as info:
            analyse((data_dir / rel).read_bytes(), policy="strict")
        assert info.value.reason == "spec_violation"
    # a clean file passes strict
    clean = data_dir / "midi/jazz-soft-test-midi-files/test-c-major-scale.mid"
    assert analyse(clean.read_bytes(), policy="strict")["facts"]["warnings"] == []


def test_rmi_wrapper_is_unwrapped(data_dir: Path) -> None:
    import struct

    smf = (data_dir / "midi/jazz-soft-test-midi-files/test-c-major-scale.mid").read_bytes()
    pad = b"\x00" if len(smf) % 2 else b""
    body = b"RMID" + b"data" + struct.pack("<I", len(smf)) + smf + pad
    rmi = b"RIFF" + struct.pack("<I", len(body)) + body
    assert analyse(rmi)["facts"]["n_notes"] == analyse(smf)["facts"]["n_notes"]
    with pytest.raises(Reject) as info:
        analyse(b"RIFF" + struct.pack("<I", 4) + b"WAVE")
    assert info.value.reason == "bad_riff"


def test_truncation_anywhere_is_rejected(data_dir: Path) -> None:
    smf = (data_dir / "lakh/lmd_full/2/297418ac1d6aeb58459a32a9d27d1b2d.mid").read_bytes()
    assert check_structure(smf)[1].warnings == []
    for cut in (1, 4, 13, 14, 22, 100, 1024, 4096, len(smf) // 2, len(smf) - 1):
        with pytest.raises(Reject) as info:
            check_structure(smf[:cut])
        assert info.value.reason in {"truncated", "not_midi"}


def test_implausible_length_is_rejected() -> None:
    import symusic

    s = symusic.Score(480)
    t = symusic.Track("x", 0, False)
    t.notes.append(symusic.Note(0, 480, 60, 90))
    t.notes.append(symusic.Note(480 * 2 * 60 * 60 * 5, 480, 62, 90))  # a note five hours in, at 120 bpm
    s.tracks.append(t)
    with pytest.raises(Reject) as info:
        analyse(s.dumps_midi())
    assert info.value.reason == "implausible_length"


def _track_ranges(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every MTrk body of an SMF that passed the chunk walk."""
    import struct

    out, pos = [], 8 + struct.unpack(">I", data[4:8])[0]
    while pos + 8 <= len(data):
        (clen,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        if data[pos : pos + 4] == b"MTrk" and pos + 8 + clen <= len(data):
            out.append((pos + 8, pos + 8 + clen))
        pos += 8 + clen
    return out


def _reference(data: bytes, start: int, end: int) -> list[str] | None:
    from corpus.parse import _scan_track

    found: list[str] = []
    try:
        _scan_track(data, start, end, 0, found)
    except Reject:
        return None
    return sorted(set(found))


def _kernel(data: bytes, start: int, end: int) -> list[str] | None:
    from corpus.scan_kernel import as_bytes_array, track_warnings

    got = track_warnings(as_bytes_array(data), start, end)
    return None if got is None else sorted(set(got))


def test_compiled_scan_agrees_with_the_python_walk_on_every_track(data_dir: Path) -> None:
    """The numba kernel and the reference walk: same clean/defect verdict, same warnings."""
    tracks = 0
    for path in _all_files():
        data = path.read_bytes()
        if data[:4] != b"MThd" or len(data) < 14:
            continue
        for start, end in _track_ranges(data):
            assert _kernel(data, start, end) == _reference(data, start, end), (path, start)
            tracks += 1
    assert tracks > 1000


def test_compiled_scan_agrees_on_mutated_tracks(data_dir: Path) -> None:
    """Byte flips, deletions and cuts of real tracks hit every branch of both walks."""
    import random

    rng = random.Random(16)
    names = [
        "lakh/lmd_full/2/297418ac1d6aeb58459a32a9d27d1b2d.mid",
        "midi/jazz-soft-test-midi-files/test-c-major-scale.mid",
        "corrupt/jazz-soft-test-midi-files__test-running-status-sysex.mid",
    ]
    verdicts: set[bool] = set()
    for name in names:
        data = (data_dir / name).read_bytes()
        for start, end in _track_ranges(data)[:3]:
            for _ in range(150):
                body = bytearray(data[start:end])
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(body))
                    op = rng.random()
                    if op < 0.6:
                        body[at] = rng.choice([rng.randrange(256), 0xF4, 0xF8, 0xFF, 0xF0, 0x80, 0x51])
                    elif op < 0.8:
                        del body[at]
                    else:
                        del body[at:]
                    if not body:
                        body = bytearray(b"\x00")
                mutated = bytes(body)
                want = _reference(mutated, 0, len(mutated))
                assert _kernel(mutated, 0, len(mutated)) == want, (name, mutated.hex())
                verdicts.add(want is None)
    assert verdicts == {True, False}  # both clean and defective mutants were compared
