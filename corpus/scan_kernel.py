"""The event walk of :func:`corpus.parse._scan_track`, compiled with numba.

The pure-Python walk costs about 14x a bare symusic parse (it touches every byte in the
interpreter). This kernel walks the same grammar at machine speed but only *answers*:
either the warnings the track carries (a bit mask) or "this track has a defect". On a
defect the caller re-runs the Python walk on that one track, so the reason code, the detail
and the offset of every rejection come from the one reference implementation; the kernel
only has to agree with it on which tracks are clean and which warnings they carry, which
``tests/test_parse.py`` checks on every real file and on byte-level mutations of them.

numba installs as a wheel from PyPI; compiled code is cached beside this file
(``cache=True``), so a new worker process loads it instead of compiling it again (about
1 s once per process, numba's import included; compiling without a cache takes a few s).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# warning bits returned by scan_track (>= 0); DEFECT (< 0) means: ask the Python walk
RUNNING_STATUS_AFTER_SYSEX = 1
RUNNING_STATUS_AFTER_META = 2
ILLEGAL_STATUS_ACCEPTED = 4
CHUNK_LENGTH_MISMATCH = 8
MISSING_END_OF_TRACK = 16
DEFECT = -1

WARNING_BITS = {
    RUNNING_STATUS_AFTER_SYSEX: "running_status_after_sysex",
    RUNNING_STATUS_AFTER_META: "running_status_after_meta",
    ILLEGAL_STATUS_ACCEPTED: "illegal_status_accepted",
    CHUNK_LENGTH_MISMATCH: "chunk_length_mismatch",
    MISSING_END_OF_TRACK: "missing_end_of_track",
}

# data bytes after a channel status, by high nibble (index: status >> 4); 0 = not channel
_CHANNEL_DATA = np.array([0] * 8 + [2, 2, 2, 2, 1, 1, 2, 0], dtype=np.int64)
# data bytes of the system common / real-time bytes symusic accepts (-1: undefined)
_SYSTEM_DEFINED = np.full(16, -1, dtype=np.int64)
for _b, _n in {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFE: 0}.items():
    _SYSTEM_DEFINED[_b & 0x0F] = _n


@njit(cache=True, nogil=True)
def _vlq(d, i, end):  # type: ignore[no-untyped-def]
    """(position after, value) of the variable-length quantity at ``i``; (-1, 0) if bad."""
    value = 0
    for _ in range(4):
        if i >= end:
            return -1, 0
        b = d[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return i, value
    return -1, 0


@njit(cache=True, nogil=True)
def scan_track(d, i, end, channel_data, system_defined):  # type: ignore[no-untyped-def]
    """Warning bits of the track ``d[i:end]``, or ``DEFECT``; mirrors ``_scan_track``."""
    flags = 0
    running = 0
    after_sysex = False
    after_meta = False
    ended = False
    while i < end:
        k = 0
        while d[i] & 0x80:
            i += 1
            k += 1
            if k >= 4 or i >= end:
                return -1
        i += 1
        if i >= end:
            return -1
        status = d[i]
        if status < 0x80:
            if running == 0:
                return -1
            if after_sysex:
                flags |= 1
                after_sysex = False
            if after_meta:
                flags |= 2
                after_meta = False
            nd = channel_data[running >> 4]
            if i + nd > end:
                return -1
            for j in range(i, i + nd):
                if d[j] & 0x80:
                    return -1
            i += nd
        elif status < 0xF0:
            running = status
            after_sysex = False
            after_meta = False
            nd = channel_data[status >> 4]
            i += 1
            if i + nd > end:
                return -1
            for j in range(i, i + nd):
                if d[j] & 0x80:
                    return -1
            i += nd
        elif status == 0xFF:
            if i + 2 > end:
                return -1
            mtype = d[i + 1]
            i, length = _vlq(d, i + 2, end)
            if i < 0 or i + length > end:
                return -1
            if mtype == 0x51 and (length != 3 or (d[i] | d[i + 1] | d[i + 2]) == 0):
                return -1
            i += length
            after_meta = running != 0
            if mtype == 0x2F:
                ended = True
                if i < end:
                    flags |= 8
                break
        elif status == 0xF0 or status == 0xF7:
            i, length = _vlq(d, i + 1, end)
            if i < 0 or i + length > end:
                return -1
            i += length
            after_sysex = running != 0
        else:
            nd = system_defined[status & 0x0F]
            if nd < 0:
                return -1
            flags |= 4
            i += 1 + nd
    if not ended:
        flags |= 16
    return flags


def as_bytes_array(data: bytes) -> np.ndarray:
    """The bytes as a read-only uint8 array (no copy)."""
    return np.frombuffer(data, dtype=np.uint8)


def track_warnings(buf: np.ndarray, start: int, end: int) -> list[str] | None:
    """Warnings of one track (``buf`` is the file as uint8), or None when it has a defect."""
    bits = scan_track(buf, start, end, _CHANNEL_DATA, _SYSTEM_DEFINED)
    if bits < 0:
        return None
    return [name for bit, name in WARNING_BITS.items() if bits & bit]
