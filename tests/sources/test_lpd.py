"""LPD .npz -> MIDI: real and pypianoroll-written files, round trips over Lakh, rejects, trees."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import symusic

from corpus import reasons
from corpus.sources.lpd import (
    BINARY_VELOCITY,
    LPD_REASONS,
    LpdError,
    LpdSource,
    npz_to_midi_bytes,
    npz_to_score,
    parse_lpd_path,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LPD = DATA / "lpd"
REAL_MD5 = "b97c529ab9ef783a849b896816001748"
REAL = LPD / "lpd_17_cleansed" / "A" / "A" / "A" / "TRAAAGR128F425B14B" / f"{REAL_MD5}.npz"
GENERATED = LPD / "generated_pypianoroll_1.0.4" / "d6caebd1964d9e4a3c5ea59525230e2a.npz"
LAKH = DATA / "lakh" / "lmd_full"
LAKH_FILES = (sorted(LAKH.glob("*/*.mid")) if LAKH.is_dir() else []) or [LAKH / "missing.mid"]  # skips, see need()
RES = 24


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data missing: {path} (tests read ../shared/data next to the repo)")
    return path


def test_lpd_reason_codes_are_registered() -> None:
    assert set(LPD_REASONS) <= set(reasons.REASONS)


# ---------------------------------------------------------------------------- helpers


def csc(roll: np.ndarray, idx: int) -> dict[str, np.ndarray]:
    """The four CSC members of one (T, 128) roll, as LPD stores them."""
    from scipy.sparse import csc_matrix

    m = csc_matrix(roll)
    return {
        f"pianoroll_{idx}_csc_data": m.data,
        f"pianoroll_{idx}_csc_indices": m.indices.astype(np.int32),
        f"pianoroll_{idx}_csc_indptr": m.indptr.astype(np.int32),
        f"pianoroll_{idx}_csc_shape": np.array(roll.shape, dtype=np.int64),
    }


def npz_bytes(arrays: dict[str, np.ndarray], info: dict[str, Any] | bytes | None) -> bytes:
    """An .npz the way LPD writes it: savez_compressed, then info.json appended to the zip."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    if info is not None:
        raw = info if isinstance(info, bytes) else json.dumps(info).encode()
        with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("info.json", raw)
    return buf.getvalue()


def legacy_npz(rolls: list[np.ndarray], tempo: np.ndarray | None = None, **info: Any) -> bytes:
    """A legacy-layout LPD file (beat_resolution, tempo (T,)) holding the given rolls."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"beat_resolution": RES, "name": "0" * 32}
    for i, roll in enumerate(rolls):
        arrays.update(csc(roll, i))
        meta[str(i)] = {"program": 0, "is_drum": False, "name": f"t{i}"}
    t = max((r.shape[0] for r in rolls), default=0)
    arrays["tempo"] = np.full(t, 120.0) if tempo is None else tempo
    meta.update(info)
    return npz_bytes(arrays, meta)


def notes(track: Any) -> list[tuple[int, int, int, int]]:
    return [(n.time, n.duration, n.pitch, n.velocity) for n in track.notes]


def run_onsets(roll: np.ndarray) -> set[tuple[int, int]]:
    """(step, pitch) where a run of non-zero steps starts: onsets as a dense decoder sees them."""
    on = roll > 0
    before = np.zeros_like(on)
    before[1:] = on[:-1]
    return {(int(t), int(p)) for t, p in zip(*np.nonzero(on & ~before), strict=True)}


def assert_matches_pypianoroll(path: Path, score: Any) -> None:
    """Our sparse decoder against pypianoroll's own loader (dense rolls): same tracks, same onsets."""
    pypianoroll = pytest.importorskip("pypianoroll")
    multi = pypianoroll.load(path)
    assert score.tpq == multi.resolution
    assert len(score.tracks) == len(multi.tracks)
    for ours, theirs in zip(score.tracks, multi.tracks, strict=True):
        assert (ours.name, ours.program, ours.is_drum) == (theirs.name or "", theirs.program, theirs.is_drum)
        assert {(t, p) for t, _, p, _ in notes(ours)} == run_onsets(theirs.pianoroll)


def f1(ref: set[Any], got: set[Any]) -> float:
    if not ref and not got:
        return 1.0
    return 2 * len(ref & got) / (len(ref) + len(got))


def pitched_onsets(score: Any) -> set[tuple[int, int, int]]:
    """(track index, pitch, onset step at 24 per beat) of every note of the pitched tracks."""
    out: set[tuple[int, int, int]] = set()
    for i, track in enumerate(score.tracks):
        if track.is_drum or not track.notes:
            continue
        a = track.notes.numpy()
        steps = np.rint(a["time"] * RES / score.tpq).astype(int)
        out.update(zip([i] * steps.size, a["pitch"].tolist(), steps.tolist(), strict=True))
    return out


def lpd_multitrack(score: Any, name: str) -> Any:
    """The LPD form of a MIDI score, built like LPD: 24 steps per beat, drums as onsets only,
    one empty step before a note that starts where the previous one of its pitch sounds."""
    pypianoroll = pytest.importorskip("pypianoroll")
    scale = RES / score.tpq
    n_steps = int(np.ceil(score.end() * scale)) + 2
    tracks = []
    for track in score.tracks:
        roll = np.zeros((n_steps, 128), np.uint8)
        if track.notes:
            a = track.notes.numpy()
            on = np.rint(a["time"] * scale).astype(int)
            off = np.maximum(np.rint((a["time"] + a["duration"]) * scale).astype(int), on + 1)
            if track.is_drum:
                off = on + 1
            for i in np.lexsort((a["pitch"], on)):
                s, e, p = on[i], off[i], a["pitch"][i]
                if s > 0 and roll[s - 1, p]:
                    roll[s - 1, p] = 0
                roll[s:e, p] = max(int(a["velocity"][i]), 1)
        tracks.append(
            pypianoroll.StandardTrack(name=track.name, program=track.program, is_drum=track.is_drum, pianoroll=roll)
        )
    tempo = np.full(n_steps, 120.0)
    for t in score.tempos:
        tempo[int(np.rint(t.time * scale)) :] = t.qpm
    return pypianoroll.Multitrack(name=name, resolution=RES, tempo=tempo.reshape(-1, 1), tracks=tracks)


# ---------------------------------------------------------------------------- real files


@pytest.mark.parametrize("path", [REAL, GENERATED], ids=["legacy-lpd17-real", "pypianoroll-1.0.4"])
def test_real_files_convert(path: Path) -> None:
    data = need(path).read_bytes()
    info = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("info.json"))
    score = npz_to_score(data)
    n_tracks = sum(1 for k in info if k.isdigit())
    assert score.tpq == info.get("resolution", info.get("beat_resolution")) == 24
    assert len(score.tracks) == n_tracks
    for i, track in enumerate(score.tracks):
        assert (track.program, track.is_drum, track.name) == (
            info[str(i)]["program"],
            info[str(i)]["is_drum"],
            info[str(i)]["name"],
        )
    assert score.note_num() > 1000
    assert score.tempos and score.tempos[0].time == 0
    assert_matches_pypianoroll(path, score)

    midi = symusic.Score.from_midi(npz_to_midi_bytes(data))  # what the raw store holds parses back
    kept = [t for t in score.tracks if t.notes]  # symusic drops note-less tracks when reading
    assert [(t.program, t.is_drum, t.note_num()) for t in midi.tracks] == [
        (t.program, t.is_drum, t.note_num()) for t in kept
    ]
    assert midi.tpq == 24


def test_real_legacy_file_details() -> None:
    score = npz_to_score(need(REAL).read_bytes())
    assert [t.name for t in score.tracks][:2] == ["Drums", "Piano"]
    assert [t.note_num() == 0 for t in score.tracks].count(True) == 5  # the (0, 128) bool tracks
    assert len(score.tempos) == 1 and abs(score.tempos[0].qpm - 122.0018) < 1e-3  # constant, stored per step
    assert len(score.time_signatures) == 0  # its downbeat marks step 0 only
    piano = score.tracks[1]
    assert {n.velocity for n in piano.notes} == {1}  # real velocity-1 notes, not binarised


def test_determinism() -> None:
    data = need(REAL).read_bytes()
    first = npz_to_midi_bytes(data)
    assert npz_to_midi_bytes(data) == first
    assert npz_to_midi_bytes(bytes(bytearray(data))) == first


# ---------------------------------------------------------------------------- decoding rules


def test_repeated_notes_come_back_as_two() -> None:
    roll = np.zeros((48, 128), np.uint8)
    roll[0:23, 60] = 100  # LPD: note 1 ends one step early ...
    roll[24:48, 60] = 90  # ... so that the repeated note 2 stays distinct
    roll[0:10, 62] = 80  # a real two-step rest is kept
    roll[12:21, 62] = 70
    roll[0:48, 64] = 50  # one long note
    roll[47, 67] = 30  # a one-step note at the very end
    (track,) = npz_to_score(legacy_npz([roll])).tracks
    assert notes(track) == [
        (0, 24, 60, 100), (0, 10, 62, 80), (0, 48, 64, 50),
        (12, 9, 62, 70), (24, 24, 60, 90), (47, 1, 67, 30),
    ]  # fmt: skip


def test_bool_roll_gets_default_velocity() -> None:
    roll = np.zeros((10, 128), bool)
    roll[2:5, 40] = True
    (track,) = npz_to_score(legacy_npz([roll])).tracks
    assert notes(track) == [(2, 3, 40, BINARY_VELOCITY)]


def test_empty_track_and_velocity_clipping() -> None:
    loud = np.zeros((4, 128), np.int64)
    loud[0:2, 50] = 300  # pypianoroll 'sum' rolls can exceed 127
    empty = np.zeros((0, 128), bool)
    score = npz_to_score(legacy_npz([empty, loud]))
    assert [t.note_num() for t in score.tracks] == [0, 1]
    assert notes(score.tracks[1]) == [(0, 2, 50, 127)]


def test_sparse_decoding_never_builds_the_dense_roll() -> None:
    t = 2**30  # a dense (T, 128) uint8 roll would take 128 GiB
    arrays = {
        "pianoroll_0_csc_data": np.array([100, 100], np.uint8),
        "pianoroll_0_csc_indices": np.array([5, t - 1], np.int32),
        "pianoroll_0_csc_indptr": np.r_[np.zeros(61), np.full(68, 2)].astype(np.int32),
        "pianoroll_0_csc_shape": np.array([t, 128], np.int64),
    }
    info = {"resolution": RES, "0": {"program": 5, "is_drum": False, "name": "x"}}
    (track,) = npz_to_score(npz_bytes(arrays, info)).tracks
    assert notes(track) == [(5, 1, 60, 100), (t - 1, 1, 60, 100)]


@pytest.mark.parametrize("column", [False, True], ids=["tempo-(T,)", "tempo-(T,1)"])
def test_tempo_events_only_where_it_changes(column: bool) -> None:
    tempo = np.r_[np.full(10, 120.0), np.full(5, 120.0 + 1e-9), np.full(10, 90.0)]
    roll = np.zeros((25, 128), np.uint8)
    data = legacy_npz([roll], tempo=tempo.reshape(-1, 1) if column else tempo)
    score = npz_to_score(data)
    assert [(t.time, t.mspq) for t in score.tempos] == [(0, 500000), (15, 666667)]


def test_downbeats_give_time_signatures() -> None:
    downbeat = np.zeros(96 * 2 + 72 * 2, bool)
    downbeat[[0, 96, 192, 264]] = True
    roll = np.zeros((downbeat.size, 128), np.uint8)
    arrays = {**csc(roll, 0), "tempo": np.full(downbeat.size, 100.0), "downbeat": downbeat}
    score = npz_to_score(npz_bytes(arrays, {"resolution": RES, "0": {"program": 0, "is_drum": False, "name": ""}}))
    assert [(t.time, t.numerator, t.denominator) for t in score.time_signatures] == [(0, 4, 4), (192, 3, 4)]


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("path", LAKH_FILES, ids=[p.stem[:8] for p in LAKH_FILES])
def test_round_trip_lakh(path: Path, tmp_path: Path) -> None:
    """Lakh MIDI -> LPD .npz (written with pypianoroll) -> MIDI: onsets of pitched tracks kept."""
    pypianoroll = pytest.importorskip("pypianoroll")
    original = symusic.Score(str(need(path)))
    out = tmp_path / f"{path.stem}.npz"
    pypianoroll.save(out, lpd_multitrack(original, path.stem))
    score = npz_to_score(out.read_bytes())
    assert [(t.program, t.is_drum) for t in score.tracks] == [(t.program, t.is_drum) for t in original.tracks]
    assert f1(pitched_onsets(original), pitched_onsets(score)) >= 0.99


@pytest.mark.parametrize("path", LAKH_FILES, ids=[p.stem[:8] for p in LAKH_FILES])
def test_pypianoroll_read_agrees(path: Path, tmp_path: Path) -> None:
    """pypianoroll.read's own LPD form of each Lakh file decodes to the onsets pypianoroll sees."""
    pypianoroll = pytest.importorskip("pypianoroll")
    need(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretty_midi warns about meta events on non-zero tracks
        multi = pypianoroll.read(path, resolution=RES, algorithm="custom", first_beat_time=0.0)
    out = tmp_path / f"{path.stem}.npz"
    pypianoroll.save(out, multi)
    assert_matches_pypianoroll(out, npz_to_score(out.read_bytes()))


# ---------------------------------------------------------------------------- rejects


def _base() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    roll = np.zeros((8, 128), np.uint8)
    roll[1:3, 60] = 100
    info = {"beat_resolution": RES, "0": {"program": 0, "is_drum": False, "name": "p"}}
    return {**csc(roll, 0), "tempo": np.full(8, 120.0)}, info


def _corrupt_cases() -> dict[str, tuple[bytes, str]]:
    """Each case is one defect applied to the valid file of :func:`_base`."""
    good, info = _base()
    valid = npz_bytes(good, info)

    def edit(**arrays: Any) -> bytes:
        return npz_bytes({**good, **arrays}, info)

    flipped = bytearray(valid)
    at = valid.index(b"pianoroll_0_csc_indices.npy") + 60  # inside that member's compressed data
    flipped[at] ^= 0xFF
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    return {
        "truncated": (valid[: len(valid) // 2], "npz_corrupt"),
        "empty": (b"", "npz_corrupt"),
        "not-a-zip": (b"MThd\x00\x00\x00\x06 definitely not an npz", "npz_corrupt"),
        "single-npy": (npy.getvalue(), "npz_corrupt"),
        "bad-member-crc": (bytes(flipped), "npz_corrupt"),
        "no-info": (npz_bytes(good, None), "npz_missing_info"),
        "info-not-json": (npz_bytes(good, b"{not json"), "npz_bad_info"),
        "info-no-resolution": (npz_bytes(good, {"0": info["0"]}), "npz_bad_info"),
        "info-bad-program": (npz_bytes(good, {**info, "0": {"program": 300, "is_drum": False}}), "npz_bad_info"),
        "track-arrays-missing": (npz_bytes(good, {**info, "1": info["0"]}), "npz_bad_shape"),
        "indptr-short": (edit(pianoroll_0_csc_indptr=np.zeros(100, np.int32)), "npz_bad_shape"),
        "index-past-end": (edit(pianoroll_0_csc_indices=np.array([1, 8], np.int32)), "npz_bad_shape"),
        "data-indices-mismatch": (edit(pianoroll_0_csc_data=np.array([100], np.uint8)), "npz_bad_shape"),
        "shape-not-128": (edit(pianoroll_0_csc_shape=np.array([8, 64], np.int64)), "npz_bad_shape"),
        "tempo-(T,2)": (edit(tempo=np.full((8, 2), 120.0)), "npz_bad_shape"),
        "tempo-zero": (edit(tempo=np.zeros(8)), "npz_bad_shape"),
    }


CORRUPT = _corrupt_cases()


def test_corrupt_cases_start_from_a_valid_file() -> None:
    good, info = _base()
    (track,) = npz_to_score(npz_bytes(good, info)).tracks
    assert notes(track) == [(1, 2, 60, 100)]


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_rejects_with_reason(case: str) -> None:
    data, code = CORRUPT[case]
    with pytest.raises(LpdError) as err:
        npz_to_score(data)
    assert err.value.reason == code, err.value.detail
    assert code in reasons.REASONS and err.value.detail


def test_npz_inflating_past_the_limit_is_a_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    from corpus.sources import lpd

    good, info = _base()
    monkeypatch.setattr(lpd, "MAX_NPZ_INFLATED", 1000)
    with pytest.raises(LpdError) as err:
        npz_to_score(npz_bytes(good, info))
    assert err.value.reason == "archive_bomb"


# ---------------------------------------------------------------------------- the source


META_TYPES = {"lmd_md5": (str, type(None)), "msd_ids": list, "lpd_variant": (str, type(None)),
              "lpd_subset": (str, type(None)), "npz_sha256": (str, type(None)), "npz_uri": str}  # fmt: skip


def check_items(items: list[Any]) -> None:
    for item in items:
        assert item.source == "lpd" and item.license == "CC-BY-4.0"
        assert set(item.meta) == set(META_TYPES)
        for key, types in META_TYPES.items():
            assert isinstance(item.meta[key], types), (key, item.meta[key])
        assert all(isinstance(m, str) for m in item.meta["msd_ids"])
        assert (item.data is None) == (item.reject is not None)
        if item.data is not None:
            assert symusic.Score.from_midi(item.data).note_num() > 0


def test_source_reads_a_tar_gz_tree_and_goes_on_after_a_reject(tmp_path: Path) -> None:
    real = need(REAL).read_bytes()
    generated = need(GENERATED).read_bytes()
    gen_md5 = GENERATED.stem
    members = {
        f"lpd_5/lpd_5_cleansed/A/A/A/TRAAAGR128F425B14B/{REAL_MD5}.npz": real,
        f"lpd_5/lpd_5_cleansed/A/B/C/TRAABCD128F4200000/{'e' * 32}.npz": real[:5000],
        f"lpd_5/lpd_5_cleansed/D/E/F/TRDEFGH128F4211111/{gen_md5}.npz": generated,
        "lpd_5/README.txt": b"not a roll",
    }
    archive = tmp_path / "lpd_5_cleansed.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo(f"lpd_5/lpd_5_cleansed/Z/Z/Z/TRZZZZZ128F4200000/{'f' * 32}.npz")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)

    items = list(LpdSource(archive))
    check_items(items)
    by_md5 = {i.meta["lmd_md5"]: i for i in items}
    assert len(items) == 4 and set(by_md5) == {REAL_MD5, "e" * 32, gen_md5, "f" * 32}
    for item in items:
        assert item.uri.startswith("lpd_5_cleansed.tar.gz!lpd_5/lpd_5_cleansed/") and item.meta["npz_uri"] == item.uri
        assert (item.meta["lpd_variant"], item.meta["lpd_subset"]) == ("lpd_5", "cleansed")
    ok = by_md5[REAL_MD5]
    assert ok.name == f"{REAL_MD5}.npz" and ok.meta["msd_ids"] == ["TRAAAGR128F425B14B"]
    assert ok.meta["npz_sha256"] == hashlib.sha256(real).hexdigest()
    assert ok.data == npz_to_midi_bytes(real)
    assert by_md5["e" * 32].reject is not None and by_md5["e" * 32].reject[0] == "npz_corrupt"
    assert by_md5["e" * 32].meta["npz_sha256"] == hashlib.sha256(real[:5000]).hexdigest()
    assert by_md5[gen_md5].data is not None and by_md5[gen_md5].meta["msd_ids"] == ["TRDEFGH128F4211111"]
    assert by_md5["f" * 32].reject is not None and by_md5["f" * 32].reject[0] == "not_regular_file"


def test_source_reads_the_shared_folder() -> None:
    items = list(LpdSource(need(LPD)))
    check_items(items)
    assert [i.reject for i in items] == [None, None]
    by_md5 = {i.meta["lmd_md5"]: i for i in items}
    real = by_md5[REAL_MD5].meta
    assert (real["lpd_variant"], real["lpd_subset"], real["msd_ids"]) == ("lpd_17", "cleansed", ["TRAAAGR128F425B14B"])
    gen = by_md5[GENERATED.stem].meta
    assert (gen["lpd_variant"], gen["lpd_subset"], gen["msd_ids"]) == (None, None, [])


def test_source_reads_a_full_tree_in_a_zip(tmp_path: Path) -> None:
    real = need(REAL).read_bytes()
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"lpd_full/b/{REAL_MD5}.npz", real)
    (item,) = LpdSource(archive)
    check_items([item])
    assert item.uri == f"download.zip!lpd_full/b/{REAL_MD5}.npz"
    assert (item.meta["lpd_variant"], item.meta["lpd_subset"], item.meta["msd_ids"]) == ("lpd", "full", [])


def test_source_takes_the_md5_from_info_when_the_name_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "renamed.npz").write_bytes(need(REAL).read_bytes())
    (item,) = LpdSource(tmp_path / "renamed.npz")
    assert item.meta["lmd_md5"] == REAL_MD5 and item.name == "renamed.npz"


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        (
            f"lpd_17_cleansed/A/A/A/TRAAAGR128F425B14B/{REAL_MD5}.npz",
            ("lpd_17", "cleansed", "TRAAAGR128F425B14B", REAL_MD5),
        ),
        (
            f"data/lpd_5/lpd_5_matched/A/A/A/TRAAAGR128F425B14B/{REAL_MD5}.npz",
            ("lpd_5", "matched", "TRAAAGR128F425B14B", REAL_MD5),
        ),
        (f"lpd_5_full.tar.gz!b/{REAL_MD5}.npz", ("lpd_5", "full", None, REAL_MD5)),
        (f"lpd_full.tar.gz!lpd_full/b/{REAL_MD5.upper()}.npz", ("lpd", "full", None, REAL_MD5)),
        (
            f"mirror/lpd_17/cleansed/A/A/A/TRAAAGR128F425B14B/{REAL_MD5}.npz",
            ("lpd_17", "cleansed", "TRAAAGR128F425B14B", REAL_MD5),
        ),
        (f"somewhere/b/{REAL_MD5}.npz", (None, "full", None, REAL_MD5)),
        ("generated_pypianoroll_1.0.4/song.npz", (None, None, None, None)),
    ],
    ids=[
        "cleansed-folder",
        "matched-nested",
        "full-tar-flat",
        "full-tar-upper",
        "variant/subset",
        "full-unmarked",
        "unknown",
    ],
)
def test_parse_lpd_path(relpath: str, expected: tuple[str | None, ...]) -> None:
    got = parse_lpd_path(relpath)
    assert (got["lpd_variant"], got["lpd_subset"], got["msd_id"], got["lmd_md5"]) == expected
