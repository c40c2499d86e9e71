"""Transposition of pitched notes (drums never move), key normalization and augmentation shifts.

``symusic.Score.shift_pitch`` also moves drum tracks, where a pitch is an instrument (kick,
snare), so tracks are shifted one by one here. Key signature events move with the notes (kept
in -6..+5 sharps, so F# major becomes Gb major). A shift that would push any pitched note out of
``[low, high]`` is not applied: the result is a :class:`TransposeSkip` with the reason code
``out_of_range`` and a detail naming the offending pitches, never a clipped or wrapped note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

if TYPE_CHECKING:
    import symusic

REASON_OUT_OF_RANGE: Final = "out_of_range"  # a shifted note would leave [low, high]
TARGET_TONIC: Final[dict[str, int]] = {"major": 0, "minor": 9}  # C major, A minor


@dataclass(frozen=True, slots=True)
class TransposeSkip:
    """A shift that was not applied, with a reason code and a detail string."""

    reason: str
    detail: str
    semitones: int

    def __bool__(self) -> bool:  # falsy, so callers can write `if not result:`
        return False


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def transpose_score(
    score: symusic.Score, semitones: int, *, low: int = 0, high: int = 127
) -> symusic.Score | TransposeSkip:
    """A deep copy of ``score`` with every pitched note moved by ``semitones``.

    Drum tracks are left as they are. If any pitched note would fall outside ``[low, high]`` the
    score is not touched and a :class:`TransposeSkip` (``out_of_range``) comes back instead.
    """
    semitones = _check_int("semitones", semitones, -127, 127)
    low = _check_int("low", low, 0, 127)
    high = _check_int("high", high, 0, 127)
    if low > high:
        raise ValueError(f"low must not exceed high, got low={low}, high={high}")
    bad: list[str] = []
    for i, track in enumerate(score.tracks):
        if track.is_drum or len(track.notes) == 0:
            continue
        p = track.notes.numpy()["pitch"].astype(np.int16)
        lo, hi = int(p.min()) + semitones, int(p.max()) + semitones
        if lo < low or hi > high:
            n_out = int(((p + semitones < low) | (p + semitones > high)).sum())
            bad.append(f"track {i}: {n_out} note(s), shifted range {lo}..{hi}")
    if bad:
        return TransposeSkip(
            reason=REASON_OUT_OF_RANGE,
            detail=f"shift {semitones:+d} leaves [{low}, {high}]: " + "; ".join(bad),
            semitones=semitones,
        )
    out = score.copy()
    if semitones == 0:
        return out
    for track in out.tracks:
        if not track.is_drum and len(track.notes):
            track.shift_pitch(semitones, inplace=True)
    _shift_key_signatures(out, semitones)
    return out


def _shift_key_signatures(score: symusic.Score, semitones: int) -> None:
    import symusic

    sigs = score.key_signatures
    for k in range(len(sigs)):
        ks = sigs[k]
        if not -7 <= ks.key <= 7:
            continue  # not a real key signature; leave it as found
        sharps = (ks.key + 7 * semitones + 6) % 12 - 6
        sigs[k] = symusic.KeySignature(ks.time, sharps, ks.tonality)


def normalize_shift(tonic_pc: int, mode: Literal["major", "minor"]) -> int:
    """Shift in -6..+5 that takes a key with tonic ``tonic_pc`` to C major / A minor."""
    tonic_pc = _check_int("tonic_pc", tonic_pc, 0, 11)
    if mode not in TARGET_TONIC:
        raise ValueError(f"mode must be 'major' or 'minor', got {mode!r}")
    return (TARGET_TONIC[mode] - tonic_pc + 6) % 12 - 6


def augment_shifts(k: int) -> list[int]:
    """Shifts for pitch augmentation: ``[-k, ..., -1, 1, ..., k]`` (no 0); k in 0..12."""
    k = _check_int("k", k, 0, 12)
    return [s for s in range(-k, k + 1) if s != 0]
