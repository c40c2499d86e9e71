"""Parse and validate one MIDI file: a structural check of our own, then symusic.

The structural check walks the chunks and the events of every track (without building
notes) so that a defect gets a precise reason code (``truncated``, ``bad_status_byte``,
``bad_data_byte``...) and files that violate the spec but parse get named warnings. Then
symusic parses the bytes and the parse-level facts of ``piece_facts`` and ``tracks`` are
measured from its arrays.

Policy for files that violate the spec but parse (``policy="lenient"``, the default): they
are kept, with every violation listed in ``piece_facts.warnings``; the notes are what
symusic reads. This is what the expected actions of ``shared/data/corrupt`` ask for (system
real-time/common bytes inside a track, a byte after the last chunk, unknown chunks, running
status across SysEx). ``policy="strict"`` rejects them with ``spec_violation``. Defects
that touch the events (undefined status bytes, data bytes above 127, running status with
no status, a chunk longer than the file) are always rejected.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["lenient", "strict"]

# plausibility limits: beyond these a file is almost surely broken, not music
MAX_DURATION_S = 4 * 3600.0
MAX_NOTES = 2_000_000
MAX_TRACKS = 1024

# data bytes after a channel status, by high nibble
_CHANNEL_DATA = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
# system common / real-time bytes: defined (but not allowed in a file) with their data length
_SYSTEM_DEFINED = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFE: 0}


class Reject(Exception):
    """A file that does not go on: ``reason`` is a code from :mod:`corpus.reasons`."""

    def __init__(self, reason: str, detail: str, offset: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.offset = offset  # byte offset of the defect, when known


@dataclass
class Header:
    format: int
    ntracks: int
    division: int
    warnings: list[str] = field(default_factory=list)


def unwrap_riff(data: bytes) -> bytes:
    """The standard MIDI file inside a RIFF RMID wrapper."""
    if len(data) < 12 or data[8:12] != b"RMID":
        raise Reject("bad_riff", f"RIFF form type {data[8:12]!r}, expected b'RMID'")
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if cid == b"data":
            inner = data[pos + 8 : pos + 8 + size]
            if len(inner) < size:
                raise Reject("truncated", f"RIFF data chunk declares {size} bytes, {len(inner)} present")
            return inner
        pos += 8 + size + (size & 1)
    raise Reject("bad_riff", "RIFF RMID without a 'data' chunk")


def check_structure(data: bytes, policy: Policy = "lenient") -> tuple[bytes, Header]:
    """Validate chunks and events; return the SMF bytes (RIFF unwrapped) and the header.

    Raises :class:`Reject` with a precise reason. Warnings land in ``Header.warnings``.
    """
    if len(data) == 0:
        raise Reject("empty_file", "0 bytes")
    if data[:4] == b"RIFF":
        data = unwrap_riff(data)
    if data[:4] != b"MThd":
        raise Reject("not_midi", f"starts with {data[:4]!r}, expected b'MThd'")
    if len(data) < 14:
        raise Reject("truncated", f"header needs 14 bytes, file has {len(data)}")
    hlen, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if hlen < 6:
        raise Reject("bad_header", f"MThd length {hlen} < 6")
    if division & 0x8000:
        raise Reject("smpte_division", f"division 0x{division:04x} (SMPTE {256 - (division >> 8)} fps)")
    if division == 0:
        raise Reject("zero_division", "ticks per quarter = 0")
    if fmt == 2:
        raise Reject("midi_format_2", f"format 2 with {ntracks} independent sequences")
    if fmt > 2:
        raise Reject("bad_header", f"format {fmt} is not 0, 1 or 2")
    from corpus.scan_kernel import as_bytes_array, track_warnings

    header = Header(fmt, ntracks, division)
    warnings = header.warnings
    buf = as_bytes_array(data)
    pos = 8 + hlen
    n = len(data)
    found = 0
    while pos < n:
        if pos + 8 > n:
            if found < ntracks:
                raise Reject("truncated", f"file ends inside a chunk header after {found} of {ntracks} tracks")
            if data[pos:].strip(b"\x00"):
                warnings.append("trailing_bytes")
            break
        cid = data[pos : pos + 4]
        (clen,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        body = pos + 8
        if cid == b"MTrk":
            if body + clen > n:
                raise Reject("truncated", f"track {found} declares {clen} bytes, {n - body} remain")
            found += 1
            if found > MAX_TRACKS:
                raise Reject("implausible_length", f"more than {MAX_TRACKS} tracks")
            fast = track_warnings(buf, body, body + clen)
            if fast is not None:
                warnings.extend(fast)
            else:  # a defect: the reference walk names it (reason, detail, offset)
                try:
                    _scan_track(data, body, body + clen, found - 1, warnings)
                except Reject as rej:
                    raise _as_cut_download(rej) from None
        elif cid.isalnum() and cid.isascii():
            if body + clen > n:
                raise Reject("truncated", f"chunk {cid!r} declares {clen} bytes, {n - body} remain")
            warnings.append("unknown_chunk")
        else:
            if found == 0:
                raise Reject("truncated", f"garbage where a chunk should start at byte {pos}")
            warnings.append("trailing_bytes")
            break
        pos = body + clen
    if found < ntracks:
        raise Reject("truncated", f"header announces {ntracks} tracks, the file ends after {found}")
    if found == 0:
        raise Reject("no_tracks", f"header says {ntracks} tracks, no MTrk chunk found")
    if found != ntracks:
        warnings.append("track_count_mismatch")
    header.warnings = sorted(set(warnings))
    if policy == "strict" and header.warnings:
        raise Reject("spec_violation", ", ".join(header.warnings))
    return data, header


def _scan_track(d: bytes, i: int, end: int, index: int, warnings: list[str]) -> None:
    """Walk one track's events; raise Reject on event-level defects."""
    running = 0
    after_sysex = after_meta = False
    ended = False
    while i < end:
        # delta time: a variable-length quantity of at most 4 bytes
        k = 0
        while d[i] & 0x80:
            i += 1
            k += 1
            if k >= 4 or i >= end:
                raise Reject("truncated", f"track {index}: delta time runs past the track at byte {i}")
        i += 1
        if i >= end:
            raise Reject("truncated", f"track {index}: delta time without an event at the end of the track")
        status = d[i]
        if status < 0x80:  # running status
            if not running:
                raise Reject(
                    "bad_running_status", f"track {index}: data byte 0x{status:02x} at {i} with no running status", i
                )
            if after_sysex:
                warnings.append("running_status_after_sysex")
                after_sysex = False
            if after_meta:
                warnings.append("running_status_after_meta")
                after_meta = False
            nd = _CHANNEL_DATA[running & 0xF0]
            if i + nd > end:
                raise Reject("truncated", f"track {index}: event at {i} runs past the track")
            for j in range(i, i + nd):
                if d[j] & 0x80:
                    raise Reject(
                        "bad_data_byte", f"track {index}: data byte 0x{d[j]:02x} at {j} (status 0x{running:02x})", j
                    )
            i += nd
        elif status < 0xF0:
            running = status
            after_sysex = after_meta = False
            nd = _CHANNEL_DATA[status & 0xF0]
            i += 1
            if i + nd > end:
                raise Reject("truncated", f"track {index}: event at {i - 1} runs past the track")
            for j in range(i, i + nd):
                if d[j] & 0x80:
                    raise Reject(
                        "bad_data_byte", f"track {index}: data byte 0x{d[j]:02x} at {j} (status 0x{status:02x})", j
                    )
            i += nd
        elif status == 0xFF:
            if i + 2 > end:
                raise Reject("truncated", f"track {index}: meta event at {i} runs past the track")
            mtype = d[i + 1]
            i, length = _vlq(d, i + 2, end, index)
            if i + length > end:
                raise Reject(
                    "bad_meta_event", f"track {index}: meta 0x{mtype:02x} of {length} bytes runs past the track"
                )
            if mtype == 0x51 and (length != 3 or not any(d[i : i + 3])):
                raise Reject(
                    "bad_meta_event",
                    f"track {index}: set tempo of {length} bytes, value {d[i : i + length].hex() or 'none'} at {i}",
                )
            i += length
            after_meta = bool(running)
            if mtype == 0x2F:
                ended = True
                if i < end:
                    warnings.append("chunk_length_mismatch")
                break
        elif status in (0xF0, 0xF7):
            i, length = _vlq(d, i + 1, end, index)
            if i + length > end:
                raise Reject("truncated", f"track {index}: SysEx of {length} bytes runs past the track")
            i += length
            after_sysex = bool(running)
        elif status in _SYSTEM_DEFINED:
            nd = _SYSTEM_DEFINED[status]
            warnings.append("illegal_status_accepted")
            i += 1 + nd
        else:
            raise Reject("bad_status_byte", f"track {index}: undefined status byte 0x{status:02x} at {i}", i)
    if not ended:
        warnings.append("missing_end_of_track")


BLOCK = 4096


def _as_cut_download(rej: Reject) -> Reject:
    """An event defect just past a 4 KiB boundary is a download cut there and filled with
    other bytes (real Lakh files end in HTML this way): call it ``truncated``."""
    if rej.offset is None:
        return rej
    at = rej.offset
    boundary = at - at % BLOCK
    if boundary and at - boundary < 8:
        return Reject(
            "truncated", f"not MIDI from byte {boundary} on (a download cut at a block boundary): {rej.detail}"
        )
    return rej


def _vlq(d: bytes, i: int, end: int, index: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        if i >= end:
            raise Reject("truncated", f"track {index}: length runs past the track")
        b = d[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return i, value
    raise Reject("bad_meta_event", f"track {index}: variable-length quantity longer than 4 bytes at {i}")


def smf_bytes(data: bytes) -> bytes:
    """The standard MIDI file in stored bytes that already passed :func:`check_structure`
    (later stages: skip the event scan, only unwrap a RIFF RMID)."""
    return data if data[:4] == b"MThd" else unwrap_riff(data)


def _symusic_reason(message: str) -> str:
    m = message.lower()
    if "status" in m and "running" in m:
        return "bad_running_status"
    if "status byte" in m:
        return "bad_status_byte"
    if "chunk length" in m or "less than" in m or "eof" in m:
        return "truncated"
    return "parse_error"


def analyse(data: bytes, policy: Policy = "lenient") -> dict[str, Any]:
    """Check, parse and measure one file. Returns ``{"facts": {...}, "tracks": [...]}``.

    Raises :class:`Reject`. Pure function of the bytes and the policy.
    """
    import numpy as np
    import symusic

    smf, header = check_structure(data, policy)
    try:
        score = symusic.Score.from_midi(smf)
    except Exception as exc:  # noqa: BLE001 - symusic raises RuntimeError/ValueError/...; its text is the detail
        text = f"{type(exc).__name__}: {exc}"
        raise Reject(_symusic_reason(text), text) from None

    tracks = []
    n_notes = 0
    pmin, pmax = 128, -1
    programs = set()
    for idx, tr in enumerate(score.tracks):
        arr = tr.notes.numpy()
        cnt = int(arr["pitch"].size)
        n_notes += cnt
        poly = _max_polyphony(arr["time"], arr["duration"]) if cnt else 0
        lo = int(arr["pitch"].min()) if cnt else None
        hi = int(arr["pitch"].max()) if cnt else None
        if cnt and not tr.is_drum:
            pmin, pmax = min(pmin, lo), max(pmax, hi)  # type: ignore[type-var]
        if cnt:
            programs.add(int(tr.program))
        tracks.append(
            {
                "track_index": idx,
                "name": tr.name,
                "program": int(tr.program),
                "is_drum": bool(tr.is_drum),
                "n_notes": cnt,
                "pitch_min": lo,
                "pitch_max": hi,
                "max_polyphony": poly,
                "is_monophonic": bool(cnt) and poly <= 1,
            }
        )
    if n_notes == 0:
        raise Reject("no_notes", f"{len(score.tracks)} tracks, 0 notes")
    if n_notes > MAX_NOTES:
        raise Reject("implausible_length", f"{n_notes} notes > {MAX_NOTES}")
    end_ticks = int(score.end())
    tempos = score.tempos.numpy()
    duration_s = (
        float(score.to("second").end())
        if len(tempos["time"]) > 1
        else end_ticks / header.division * ((tempos["mspq"][0] / 1e6) if len(tempos["time"]) else 0.5)
    )
    if duration_s > MAX_DURATION_S:
        raise Reject("implausible_length", f"{duration_s:.0f} s > {MAX_DURATION_S:.0f} s")
    # round only where the tempo changes: equal neighbours give equal rounded values, and
    # the list is deduplicated again after rounding (files with 10^4 tempo events exist)
    mspq = tempos["mspq"]
    if len(mspq) > 1:
        mspq = mspq[np.concatenate(([True], mspq[1:] != mspq[:-1]))]
    bpms = [round(6e7 / float(m), 3) for m in mspq.tolist()]
    tss = [f"{t.numerator}/{t.denominator}" for t in score.time_signatures]
    keys = [_key_name(k.key, k.tonality) for k in score.key_signatures]
    pitched = [t for t in tracks if not t["is_drum"] and t["n_notes"]]
    facts = {
        "midi_format": header.format,
        "ticks_per_quarter": header.division,
        "n_tracks": sum(1 for t in tracks if t["n_notes"]),
        "n_pitched_tracks": len(pitched),
        "n_drum_tracks": sum(1 for t in tracks if t["is_drum"] and t["n_notes"]),
        "n_notes": n_notes,
        "duration_ticks": end_ticks,
        "duration_quarters": end_ticks / header.division,
        "duration_s": round(duration_s, 6),
        "tempo_bpm": bpms[0] if bpms else 120.0,
        "tempos_bpm": _dedup_consecutive(bpms),
        "time_signature": tss[0] if tss else "4/4",
        "time_signatures": _dedup_consecutive(tss),
        "key_signatures": _dedup_consecutive(keys),
        "programs": sorted(programs),
        "pitch_min": pmin if pmax >= 0 else None,
        "pitch_max": pmax if pmax >= 0 else None,
        "warnings": header.warnings,
        "policy": policy,
        "parser": f"symusic {symusic.__version__}",
    }
    return {"facts": facts, "tracks": tracks}


_SHARPS = ["C", "G", "D", "A", "E", "B", "F#", "C#"]
_FLATS = ["C", "F", "Bb", "Eb", "Ab", "Db", "Gb", "Cb"]
_MINOR_SHARPS = ["A", "E", "B", "F#", "C#", "G#", "D#", "A#"]
_MINOR_FLATS = ["A", "D", "G", "C", "F", "Bb", "Eb", "Ab"]


def _key_name(sf: int, minor: int) -> str:
    sf = max(-7, min(7, int(sf)))
    if minor:
        return (_MINOR_SHARPS[sf] if sf >= 0 else _MINOR_FLATS[-sf]) + " minor"
    return (_SHARPS[sf] if sf >= 0 else _FLATS[-sf]) + " major"


def _dedup_consecutive(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def _max_polyphony(time: Any, duration: Any) -> int:
    """Most notes sounding at once (a note ending at t does not overlap one starting at t)."""
    import numpy as np

    # after all events at a tick (ends before starts), the count is starts<=t - ends<=t;
    # its maximum is reached at a tick where a note starts
    starts = np.sort(time.astype(np.int64))
    ends = np.sort(time.astype(np.int64) + duration.astype(np.int64))
    return int((np.searchsorted(starts, starts, "right") - np.searchsorted(ends, starts, "right")).max())
