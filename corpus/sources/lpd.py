"""Lakh Pianoroll Dataset (LPD): ``.npz`` piano rolls back to MIDI, with lineage.

Every LPD release (``lpd``, ``lpd_5``, ``lpd_17``; ``full``, ``matched``, ``cleansed``; a
folder or the ``.tar.gz``) is read by :class:`LpdSource`. Each ``.npz`` becomes one MIDI
piece, so every later stage treats it like any other MIDI; its ``meta`` links it to the
Lakh file it came from (``lmd_md5``, the npz file name) and the Million Song Dataset ids of
its folder. The layout is described in ``shared/data/lpd/FORMAT.md``: both the legacy one of
the real release (``beat_resolution``, tempo ``(T,)``, empty tracks ``(0, 128)``) and
pypianoroll 1.x (``resolution``, tempo ``(T, 1)``) are read, straight from the zip with
numpy; pypianoroll is not needed at run time.

Conversion rules (the inverse of how LPD was written):

* time: one tick per time step, ``tpq`` = the roll resolution (24 in LPD).
* notes: per pitch column, a run of consecutive non-zero steps is one note, its velocity the
  value at its first step (clipped to 1..127). LPD leaves one empty step between repeated
  notes of a pitch, so a note followed one empty step later by the same pitch is extended
  over that step: two notes, no spurious gap. A gap of two steps or more is kept.
* velocity of binarised (``bool``) rolls: 64, pypianoroll's own default velocity when it
  writes binary tracks to MIDI, and the middle of the range (no dynamics are known).
* tempo: one Tempo where the tempo array changes, compared as whole microseconds per
  quarter (what MIDI stores), so float noise does not make a tempo event per step. No tempo
  array: no Tempo event (MIDI's default of 120 bpm).
* time signature: from ``downbeat`` only when it marks at least two bars; each bar whose
  length is a whole number n of beats gives n/4 where it changes. The real LPD file marks
  only step 0, so LPD pieces carry no time signature (MIDI's default 4/4, which is also
  LPD-cleansed's selection rule).
* tracks: one per ``info.json`` entry ``"0"``, ``"1"``, ... in index order, empty ones
  included, with their program, drum flag and name.

Decoding is track by track from the sparse CSC components; no dense ``(T, 128)`` roll is
ever built.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from corpus.reasons import REASONS
from corpus.sources.base import SourceItem
from corpus.sources.files import Limits, archive_kind, count_files, walk

if TYPE_CHECKING:
    from symusic.core import ScoreTick

LICENSE: Final = "CC-BY-4.0"
BINARY_VELOCITY: Final = 64  # velocity of notes from a bool (binarised) roll
MAX_NPZ_INFLATED: Final = 1024 * 1024**2  # sum of the members' inflated sizes of one .npz
MAX_STEPS: Final = 2**31 - 2  # symusic ticks are int32
N_PITCHES: Final = 128

# Reject codes this source needs (to be listed in corpus.reasons.REASONS).
LPD_REASONS: Final[dict[str, str]] = {
    k: REASONS[k] for k in ("npz_corrupt", "npz_missing_info", "npz_bad_info", "npz_bad_shape")
}

_MSD_ID = re.compile(r"^TR[A-Z0-9]{16}$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_VARIANTS: Final = ("lpd", "lpd_5", "lpd_17")
_SUBSETS: Final = ("full", "matched", "cleansed")
_VARIANT_SUBSET = re.compile(r"^(lpd(?:_5|_17)?)_(full|matched|cleansed)$")
_ARCHIVE_SUFFIX = re.compile(r"\.(zip|tar|tar\.gz|tgz|tar\.bz2|tbz2|tar\.xz|txz)$", re.IGNORECASE)


class LpdError(Exception):
    """An ``.npz`` that cannot be converted: ``reason`` is a reject code, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------- reading


def _open_npz(data: bytes) -> Any:
    """Open the bytes as an NpzFile (members are read lazily, one at a time)."""
    if data.startswith(b"\x93NUMPY"):
        raise LpdError("npz_corrupt", "a single .npy array, not an .npz archive")
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise LpdError("npz_corrupt", f"not a zip archive (starts with {data[:8]!r})")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise LpdError("npz_corrupt", f"cannot open as .npz: {type(exc).__name__}: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise LpdError("npz_corrupt", "a single .npy array, not an .npz archive")
    inflated = sum(info.file_size for info in npz.zip.infolist())
    if inflated > MAX_NPZ_INFLATED:
        npz.close()
        raise LpdError("archive_bomb", f"members inflate to {inflated} bytes > {MAX_NPZ_INFLATED}")
    return npz


def _member(npz: Any, key: str) -> Any:
    """One member of the npz (an array, or raw bytes for non-.npy members); corrupt -> reject."""
    try:
        return npz[key]
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise LpdError("npz_corrupt", f"member {key!r}: {type(exc).__name__}: {exc}") from None


def _array(npz: Any, key: str, kinds: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    if key not in npz.files:
        raise LpdError("npz_bad_shape", f"missing array {key!r}")
    arr = _member(npz, key)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kinds or arr.ndim not in ndims:
        what = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise LpdError("npz_bad_shape", f"{key!r} is a {what}; expected {ndims}-d of kind {kinds!r}")
    return arr


def _read_info(npz: Any) -> dict[str, Any]:
    if "info.json" not in npz.files:
        raise LpdError("npz_missing_info", "no info.json member")
    raw = _member(npz, "info.json")
    if isinstance(raw, np.ndarray):
        raise LpdError("npz_bad_info", "info.json is a .npy array, not JSON")
    try:
        info = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LpdError("npz_bad_info", f"info.json is not JSON: {exc}") from None
    if not isinstance(info, dict):
        raise LpdError("npz_bad_info", f"info.json holds a {type(info).__name__}, not an object")
    return info


def _resolution(info: dict[str, Any]) -> int:
    """``resolution`` (pypianoroll >= 1.0), else ``beat_resolution`` (LPD as distributed)."""
    res = info.get("resolution")
    if res is None:
        res = info.get("beat_resolution")
    if res is None:
        raise LpdError("npz_bad_info", "info.json has neither 'resolution' nor 'beat_resolution'")
    if isinstance(res, float) and res.is_integer():
        res = int(res)
    if isinstance(res, bool) or not isinstance(res, int) or not 1 <= res <= 0x7FFF:
        raise LpdError("npz_bad_info", f"resolution {res!r} is not an integer in 1..32767")
    return res


def _track_info(info: dict[str, Any], idx: int) -> tuple[str, int, bool]:
    entry = info[str(idx)]
    if not isinstance(entry, dict):
        raise LpdError("npz_bad_info", f"info.json track {idx} is a {type(entry).__name__}, not an object")
    program = entry.get("program", 0)
    if program is None:
        program = 0
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
        raise LpdError("npz_bad_info", f"info.json track {idx}: program {program!r} is not in 0..127")
    is_drum = entry.get("is_drum", False)
    if is_drum is None:
        is_drum = False
    if not isinstance(is_drum, bool):
        raise LpdError("npz_bad_info", f"info.json track {idx}: is_drum {is_drum!r} is not a boolean")
    name = entry.get("name") or ""
    if not isinstance(name, str):
        raise LpdError("npz_bad_info", f"info.json track {idx}: name {name!r} is not a string")
    return name, program, is_drum


def _track_notes(npz: Any, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(time, duration, pitch, velocity) of track ``idx``, sorted by time then pitch."""
    key = f"pianoroll_{idx}_csc"
    shape = _array(npz, f"{key}_shape", "iu", 1)
    if shape.size != 2 or int(shape[1]) != N_PITCHES or not 0 <= int(shape[0]) <= MAX_STEPS:
        raise LpdError("npz_bad_shape", f"track {idx}: roll shape {shape.tolist()}; expected [T, 128]")
    n_steps = int(shape[0])
    indptr = _array(npz, f"{key}_indptr", "iu", 1).astype(np.int64)
    if indptr.size != N_PITCHES + 1:
        raise LpdError("npz_bad_shape", f"track {idx}: indptr has {indptr.size} entries; expected 129")
    indices = _array(npz, f"{key}_indices", "iu", 1)
    values = _array(npz, f"{key}_data", "biuf", 1)
    nnz = indices.size
    if indptr[0] != 0 or indptr[-1] != nnz or values.size != nnz or np.any(np.diff(indptr) < 0):
        raise LpdError(
            "npz_bad_shape",
            f"track {idx}: indptr [{indptr[0]}..{indptr[-1]}] does not index {nnz} indices / {values.size} values",
        )
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= n_steps):
        raise LpdError("npz_bad_shape", f"track {idx}: time index outside 0..{n_steps - 1}")

    pitch = np.repeat(np.arange(N_PITCHES, dtype=np.int64), np.diff(indptr))
    step = indices.astype(np.int64)
    keep = values if values.dtype.kind == "b" else values > 0  # explicit zeros are silence
    if not keep.all():
        pitch, step, values = pitch[keep], step[keep], values[keep]
    order_key = pitch * (n_steps + 1) + step
    if order_key.size > 1 and np.any(np.diff(order_key) <= 0):  # unsorted or duplicate (non-canonical CSC)
        order = np.argsort(order_key, kind="stable")
        order_key = order_key[order]
        first = np.r_[True, np.diff(order_key) != 0]
        order = order[first]
        pitch, step, values = pitch[order], step[order], values[order]

    n = step.size
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    starts_run = np.ones(n, dtype=bool)
    starts_run[1:] = (pitch[1:] != pitch[:-1]) | (step[1:] != step[:-1] + 1)
    first = np.flatnonzero(starts_run)
    last = np.r_[first[1:], n] - 1
    onset = step[first]
    offset = step[last] + 1
    note_pitch = pitch[first]
    # LPD's separator: one empty step before a repeated note of the same pitch
    closes = (note_pitch[1:] == note_pitch[:-1]) & (onset[1:] == offset[:-1] + 1)
    offset[:-1][closes] += 1
    if values.dtype.kind == "b":
        velocity = np.full(first.size, BINARY_VELOCITY, dtype=np.int64)
    else:
        velocity = np.clip(np.rint(values[first]), 1, 127).astype(np.int64)
    order = np.lexsort((note_pitch, onset))
    return onset[order], (offset - onset)[order], note_pitch[order], velocity[order]


def _steps_array(npz: Any, key: str, kinds: str) -> np.ndarray | None:
    """A per-step global array (tempo, downbeat) of shape (T,) or (T, 1), or None if absent."""
    if key not in npz.files:
        return None
    arr = _array(npz, key, kinds, (1, 2))
    if arr.ndim == 2:
        if arr.shape[1] != 1:
            raise LpdError("npz_bad_shape", f"{key!r} has shape {arr.shape}; expected (T,) or (T, 1)")
        arr = arr[:, 0]
    if arr.size > MAX_STEPS:
        raise LpdError("npz_bad_shape", f"{key!r} has {arr.size} steps > {MAX_STEPS}")
    return arr


def _tempo_changes(tempo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step, microseconds per quarter) wherever the MIDI tempo changes, from step 0."""
    if tempo.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bpm = tempo.astype(np.float64)
    if not np.all(np.isfinite(bpm)) or np.any(bpm <= 0):
        bad = int(np.flatnonzero(~(np.isfinite(bpm) & (bpm > 0)))[0])
        raise LpdError("npz_bad_shape", f"tempo[{bad}] = {float(bpm[bad])!r} bpm is not a positive number")
    mspq = np.clip(np.rint(60_000_000.0 / bpm), 1, 0xFFFFFF).astype(np.int64)
    where = np.flatnonzero(np.r_[True, mspq[1:] != mspq[:-1]])
    return where, mspq[where]


def _time_signatures(downbeat: np.ndarray, resolution: int) -> list[tuple[int, int]]:
    """(step, numerator) of n/4 signatures read from the downbeat marks; [] when under two bars."""
    marks = np.flatnonzero(downbeat)
    out: list[tuple[int, int]] = []
    if marks.size < 2:
        return out
    current = 0
    for at, length in zip(marks[:-1].tolist(), np.diff(marks).tolist(), strict=True):
        if length % resolution or not 1 <= length // resolution <= 255:
            continue
        num = length // resolution
        if num != current:
            out.append((at, num))
            current = num
    return out


def _convert(data: bytes) -> tuple[ScoreTick, str | None]:
    """The Score of one .npz and the ``name`` field of its info.json (the source MIDI's md5)."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    npz = _open_npz(data)
    with npz:
        info = _read_info(npz)
        resolution = _resolution(info)
        score = Score(resolution)
        tempo = _steps_array(npz, "tempo", "iuf")
        if tempo is not None:
            for at, mspq in zip(*(a.tolist() for a in _tempo_changes(tempo)), strict=True):
                score.tempos.append(Tempo(at, mspq=mspq))
        downbeat = _steps_array(npz, "downbeat", "biuf")
        if downbeat is not None:
            for at, num in _time_signatures(downbeat, resolution):
                score.time_signatures.append(TimeSignature(at, num, 4))
        idx = 0
        while str(idx) in info:
            name, program, is_drum = _track_info(info, idx)
            track = Track(name, program, is_drum)
            time, duration, pitch, velocity = _track_notes(npz, idx)
            if time.size:
                track.notes = Note.from_numpy(
                    time.astype(np.int32),
                    duration.astype(np.int32),
                    pitch.astype(np.int8),
                    velocity.astype(np.int8),
                )
            score.tracks.append(track)
            idx += 1
    name = info.get("name")
    return score, name if isinstance(name, str) else None


def npz_to_score(data: bytes) -> ScoreTick:
    """The ``symusic.Score`` (ticks, ``tpq`` = roll resolution) of one LPD ``.npz``.

    Raises :class:`LpdError` with a reject code when the bytes are not a usable LPD file.
    """
    return _convert(data)[0]


def npz_to_midi_bytes(data: bytes) -> bytes:
    """The MIDI bytes of one LPD ``.npz``; the same input always gives the same bytes."""
    return bytes(npz_to_score(data).dumps_midi())


# ---------------------------------------------------------------------------- lineage


def parse_lpd_path(relpath: str) -> dict[str, str | None]:
    """Variant, subset, MSD id and Lakh md5 from where an ``.npz`` sits in an LPD tree.

    ``relpath`` is a '/'-separated path, ``archive.tar.gz!member`` inside archives. The
    variant and subset come from the innermost ``lpd[_5|_17]_<subset>`` component (also the
    name of an archive, suffix dropped), else from ``<variant>/<subset>`` components; a
    ``<hex>/<md5>.npz`` tree without a marker is ``full``. ``msd_id`` is the innermost
    ``TR...`` folder (matched/cleansed trees); ``lmd_md5`` the file name stem when it is an
    md5. Anything not found is None.
    """
    parts: list[str] = []
    for chunk in relpath.replace("\\", "/").split("!"):
        parts.extend(p for p in chunk.split("/") if p and p != ".")
    dirs = [_ARCHIVE_SUFFIX.sub("", p) if archive_kind(p) else p for p in parts[:-1]]
    filename = parts[-1] if parts else ""
    variant: str | None = None
    subset: str | None = None
    for i, part in enumerate(dirs):
        low = part.lower()
        m = _VARIANT_SUBSET.match(low)
        if m:
            variant, subset = m.group(1), m.group(2)
        elif low in _VARIANTS and i + 1 < len(dirs) and dirs[i + 1].lower() in _SUBSETS:
            variant, subset = low, dirs[i + 1].lower()
        elif low in ("lpd_5", "lpd_17"):
            variant = low
    msd_id = next((p for p in reversed(dirs) if _MSD_ID.match(p)), None)
    stem = PurePosixPath(filename).stem if filename.lower().endswith(".npz") else ""
    lmd_md5 = stem.lower() if _MD5.match(stem) else None
    if subset is None and msd_id is None and lmd_md5 and dirs and dirs[-1].lower() == lmd_md5[0]:
        subset = "full"
    return {"lpd_variant": variant, "lpd_subset": subset, "msd_id": msd_id, "lmd_md5": lmd_md5}


def is_npz_name(name: str) -> bool:
    return name.lower().endswith(".npz")


class LpdSource:
    """Every ``.npz`` under an LPD folder or archive, as MIDI with its LPD lineage.

    ``meta`` keys, the same for every item: ``lmd_md5`` (str | None; the file name, else the
    md5 in info.json), ``msd_ids`` (list[str]), ``lpd_variant`` / ``lpd_subset`` (str | None),
    ``npz_sha256`` (str | None when unread), ``npz_uri`` (str).
    """

    name = "lpd"

    def __init__(
        self, path: str | os.PathLike[str], limits: Limits = Limits(), engine: Any = None, batch: int = 16
    ) -> None:
        self.path = path
        self.limits = limits
        self.engine = engine  # with an engine, the conversion runs in its workers
        self.batch = batch
        self.total: int | None = None  # a progress total, known once iteration starts
        self.unit = "files"

    def _entries(self) -> Iterator[tuple[dict[str, Any], dict[str, Any], bytes | None, tuple[str, str] | None]]:
        self.total = count_files(self.path, is_npz_name)
        for entry in walk(self.path, want=is_npz_name, limits=self.limits):
            where = parse_lpd_path(entry.relpath)
            meta: dict[str, Any] = {
                "lmd_md5": where["lmd_md5"],
                "msd_ids": [where["msd_id"]] if where["msd_id"] else [],
                "lpd_variant": where["lpd_variant"],
                "lpd_subset": where["lpd_subset"],
                "npz_sha256": hashlib.sha256(entry.data).hexdigest() if entry.data is not None else None,
                "npz_uri": entry.relpath,
            }
            common = {"source": self.name, "uri": entry.relpath, "name": entry.name, "license": LICENSE}
            yield common, meta, entry.data, entry.reject

    def __iter__(self) -> Iterator[SourceItem]:
        if self.engine is None:
            for common, meta, data, reject in self._entries():
                if data is None:
                    yield SourceItem(data=None, meta=meta, reject=reject, **common)
                    continue
                yield _item(common, meta, convert_one(data))
            return
        # the engine converts batches in its workers while this process reads the next entries
        pending: list[tuple[dict[str, Any], dict[str, Any], bytes]] = []

        def batches() -> Iterator[list[tuple[dict[str, Any], dict[str, Any], bytes]]]:
            for common, meta, data, reject in self._entries():
                if data is None:
                    pending_rejects.append(SourceItem(data=None, meta=meta, reject=reject, **common))
                    continue
                pending.append((common, meta, data))
                if len(pending) >= self.batch:
                    yield pending[:]
                    pending.clear()
            if pending:
                yield pending[:]

        pending_rejects: list[SourceItem] = []
        for batch, results in self.engine.map_unordered(convert_batch, batches()):
            yield from pending_rejects
            pending_rejects.clear()
            for (common, meta, _), out in zip(batch, results):
                yield _item(common, meta, out)
        yield from pending_rejects


def convert_one(data: bytes) -> tuple[Any, ...]:
    """("ok", midi_bytes, info_name) or ("reject", reason, detail) for one .npz."""
    try:
        score, info_name = _convert(data)
    except LpdError as err:
        return ("reject", err.reason, err.detail)
    return ("ok", bytes(score.dumps_midi()), info_name)


def convert_batch(batch: list[tuple[dict[str, Any], dict[str, Any], bytes]]) -> list[tuple[Any, ...]]:
    """Dask task: convert each .npz of the batch (decoded track by track, never a dense roll)."""
    return [convert_one(data) for _, _, data in batch]


def _item(common: dict[str, Any], meta: dict[str, Any], out: tuple[Any, ...]) -> SourceItem:
    if out[0] == "reject":
        return SourceItem(data=None, meta=meta, reject=(out[1], out[2]), **common)
    _, midi, info_name = out
    if meta["lmd_md5"] is None and info_name and _MD5.match(info_name):
        meta["lmd_md5"] = info_name.lower()
    return SourceItem(data=midi, meta=meta, **common)
