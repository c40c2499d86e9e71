"""Key estimation: duration-weighted pitch-class histogram x key profiles (Krumhansl-Schmuckler).

The fast path works on a parsed ``symusic.Score`` and reproduces what music21 10.5 does for
``converter.parse(midi).analyze('key')``, so that the two agree (measured by
:func:`measure_agreement`), at a few hundred times the speed:

* histogram: music21 sums, per note or chord, its *quantized* quarterLength into each pitch
  class of its pitches (a chord counts its duration once per pitch; drums excluded). music21's
  MIDI import quantizes by default (``quantizePost=True``, divisors ``(4, 3)``: the nearest
  16th or eighth-triplet grid point, with a look-ahead that prefers durations that reach the next
  onset), and it first gathers notes of a track that start within a 16th of each other *and*
  end within a 16th of each other into chords whose duration is that of the *last* gathered
  note (a known music21 quirk). Zero-length notes become grace notes and weigh nothing.
  :func:`pitch_class_histogram` replays all of this on symusic's notes.
* correlation: Pearson correlation of the histogram with the 24 rotations of a profile, in
  music21's order of operations; ties go to the higher pitch class, then minor (music21 sorts
  ``(coefficient, Pitch, mode)`` tuples and takes the last). Near ties (< 1e-9) are re-done in
  pure Python exactly as music21 does.
* spelling: the tonic is spelled as music21 spells it (``E-`` major, ``G#`` minor) with ``-``
  written ``b`` (``Eb``).

A re-struck pitch is ended at its first note-off after the note-on, as music21 pairs them
(symusic pairs first in, first out; see ``texture.retrigger_ends``). Where the emulation cannot
follow music21: symusic splits a MIDI track by channel while music21 keeps one part per MIDI
track (so for format-0 and other multi-channel tracks, chord gathering, look-ahead and "a chord
with any channel-10 note is a percussion chord" work per channel here); a note-on written before
a note-off of the same pitch on the same tick (music21: a zero-length grace note) cannot be told
from symusic's output; and music21's ``makeMeasures``/``makeTies`` on bars that need voices
can shift later bars and duplicate tied notes, which inflates its histogram (JENOVA.mid,
caitsith.mid in the test data). These are the disagreements :func:`measure_agreement` finds.

``estimate_key_music21`` runs music21 itself (the exact, slow backend).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from corpus.curation.texture import retrigger_ends

if TYPE_CHECKING:
    import symusic

Profile = Literal["aarden", "krumhansl", "temperley", "bellman", "simple"]
Mode = Literal["major", "minor"]

# fmt: off
# Weights copied from music21 10.5.1, music21/analysis/discrete.py (getWeights of each class).
PROFILES: Final[dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    # AardenEssen: music21's default for analyze('key')
    "aarden": (
        (17.7661, 0.145624, 14.9265, 0.160186, 19.8049, 11.3587,
         0.291248, 22.062, 0.145624, 8.15494, 0.232998, 4.95122),
        (18.2648, 0.737619, 14.0499, 16.8599, 0.702494, 14.4362,
         0.702494, 18.6161, 4.56621, 1.93186, 7.37619, 1.75623),
    ),
    # KrumhanslSchmuckler (= KrumhanslKessler in music21 >= 6.3)
    "krumhansl": (
        (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
        (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17),
    ),
    "temperley": (
        (0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
        (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330),
    ),
    "bellman": (
        (16.80, 0.86, 12.95, 1.41, 13.49, 11.93, 1.25, 20.28, 1.80, 8.04, 0.62, 10.57),
        (18.16, 0.69, 12.99, 13.34, 1.07, 11.15, 1.38, 21.07, 7.49, 1.53, 0.92, 10.21),
    ),
    "simple": (
        (2, 0, 1, 0, 1, 1, 0, 2, 0, 1, 0, 1),
        (2, 0, 1, 1, 0, 1, 0, 2, 1, 0, 0.5, 0.5),
    ),
}
# fmt: on
# music21 analysis class names, for the music21 backend
M21_CLASSES: Final[dict[str, str]] = {
    "aarden": "AardenEssen",
    "krumhansl": "KrumhanslSchmuckler",
    "temperley": "TemperleyKostkaPayne",
    "bellman": "BellmanBudge",
    "simple": "SimpleWeights",
}
MODES: Final[tuple[Mode, Mode]] = ("major", "minor")

# music21's choice of enharmonic for a key found at a pitch class (_bestKeyEnharmonic)
TONIC_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "major": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
# key signature (sharps -7..7, index + 7) -> tonic
_SIG_TONICS: Final[dict[str, tuple[str, ...]]] = {
    "major": ("Cb", "Gb", "Db", "Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#"),
    "minor": ("Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#", "G#", "D#", "A#"),
}
_PC_OF: Final[dict[str, int]] = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}

QUANTIZE_DIVISORS: Final = (4, 3)  # music21 defaults.quantizationQuarterLengthDivisors
NEAR_TIE: Final = 1e-9


@dataclass(frozen=True, slots=True)
class KeyEstimate:
    """One key: tonic as music21 spells it (flats as ``b``), mode, and how sure."""

    tonic: str
    tonic_pc: int
    mode: Mode
    correlation: float  # Pearson r of the winning key
    confidence: float  # r(best) - r(runner-up), over all 24 keys
    profile: str

    @property
    def name(self) -> str:
        return f"{self.tonic} {self.mode}"


@dataclass(frozen=True, slots=True)
class DeclaredKey:
    """A key signature meta event (what the file says, not what it sounds like)."""

    tonic: str
    tonic_pc: int
    mode: Mode
    sharps: int  # -7..7, negative = flats
    time: int  # tick of the event
    n_changes: int  # key signature events in the file that differ from the first


@dataclass(frozen=True, slots=True)
class WindowKey:
    """Key of the bars ``[bar, bar + n_bars)``; ``key`` is None when the window has no notes."""

    bar: int
    n_bars: int
    start: int  # tick
    end: int  # tick (exclusive)
    key: KeyEstimate | None


def pc_name_to_pc(name: str) -> int:
    """``'C#'``, ``'Bb'``, ``'E-'`` -> pitch class; raises ValueError on anything else."""
    if not name or name[0].upper() not in _PC_OF:
        raise ValueError(f"not a pitch name: {name!r}; expected a letter A-G and #/b/- signs")
    pc = _PC_OF[name[0].upper()]
    for ch in name[1:]:
        if ch == "#":
            pc += 1
        elif ch in "b-":
            pc -= 1
        else:
            raise ValueError(f"not a pitch name: {name!r}; expected a letter A-G and #/b/- signs")
    return pc % 12


def _check_profile(profile: str) -> tuple[np.ndarray, np.ndarray]:
    if profile not in PROFILES:
        raise ValueError(f"unknown key profile {profile!r}; expected one of {sorted(PROFILES)}")
    major, minor = PROFILES[profile]
    return np.asarray(major, dtype=np.float64), np.asarray(minor, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# music21's MIDI import, replayed on arrays


def _nearest(x: np.ndarray, div: int, zero_allowed: np.ndarray | bool):
    """common.nearestMultiple(x, 1/div) as music21 calls it: (match, rounded error)."""
    unit = 1.0 / div
    mult = np.floor(x / unit)
    low = unit * mult
    high = unit * (mult + 1.0)
    use_low = (low <= x) & (x <= low + unit / 2.0)
    match = np.where(use_low, low, high)
    err = np.round(np.where(use_low, x - low, high - x), 7)
    forced = ~np.asarray(zero_allowed) & (match == 0.0)
    if forced.any():
        match = np.where(forced, unit, match)
        err = np.where(forced, np.abs(np.round(x - unit, 7)), err)
    return match, err


def _quantize_offsets(ql: np.ndarray) -> np.ndarray:
    """Stream.quantize offsets: nearest of the 1/4 and 1/3 grids (ties: 1/4); in 1/12 QL."""
    m4, e4 = _nearest(ql, 4, True)
    m3, e3 = _nearest(ql, 3, True)
    return np.where(e4 <= e3, np.rint(m4 * 4.0) * 3, np.rint(m3 * 3.0) * 4).astype(np.int64)


def _quantize_durations(ql: np.ndarray, grace: np.ndarray, gap12: np.ndarray) -> np.ndarray:
    """Stream.quantize durations with music21 7+'s look-ahead; in 1/12 QL.

    ``gap12`` is the distance from this element's quantized offset to the next later quantized
    offset in its part (0 where there is none). For each divisor music21 ranks
    ``(remainingGap, error, tick)``; remainingGap is 0 where the gap is a multiple of the tick
    (tested with float ``%`` as music21 does), else ``max(gap - match, 0)``.
    """
    gap = gap12 / 12.0
    best = None
    for div in QUANTIZE_DIVISORS:
        unit = 1.0 / div
        match, err = _nearest(ql, div, grace)
        rem = np.where(np.fmod(gap, unit) == 0.0, 0.0, np.maximum(gap - match, 0.0))
        if best is None:
            best = (rem, err, unit, match)
            continue
        brem, berr, bunit, bmatch = best
        # lexicographic (rem, err, tick): replace where the new candidate is smaller
        take = (rem < brem) | ((rem == brem) & ((err < berr) | ((err == berr) & (unit < bunit))))
        best = (
            np.where(take, rem, brem),
            np.where(take, err, berr),
            unit,
            np.where(take, match, bmatch),
        )
    assert best is not None
    return np.rint(best[3] * 12.0).astype(np.int64)


def _gather_chords(on: np.ndarray, off: np.ndarray, tol: float):
    """midiTrackToStream's chord gathering, on notes sorted by (track, onset).

    Tracks must be kept apart by the caller (their ticks offset so that no two tracks come
    within ``tol``). Returns (member note index, its element, element onset, element end): a
    note may belong to two elements, as music21's inner loop does not skip notes already
    gathered. Vectorized for the usual case, a lone note or a block whose onsets and ends all
    lie within ``tol`` of its first note; other runs of close onsets go through music21's loop.
    """
    n = len(on)
    brk = np.empty(n, dtype=bool)  # runs of notes whose consecutive onsets are closer than tol
    brk[0] = True
    brk[1:] = (on[1:] - on[:-1]) >= tol
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], n)
    cid = np.cumsum(brk) - 1
    bad = (np.abs(on - on[starts][cid]) >= tol) | (np.abs(off - off[starts][cid]) > tol)
    bad_run = np.zeros(len(starts), dtype=bool)
    np.logical_or.at(bad_run, cid, bad)
    good = ~bad_run
    # good runs: one element each, onset of the first note, duration of the last one (music21)
    last = ends[good] - 1
    el_on = [on[starts[good]]]
    el_end = [on[starts[good]] + (off[last] - on[last])]
    good_note = good[cid]
    members = [np.flatnonzero(good_note)]
    owners = [(np.cumsum(good) - 1)[cid[good_note]]]
    n_el = int(good.sum())
    if bad_run.any():
        m_idx: list[int] = []
        m_own: list[int] = []
        x_on: list[int] = []
        x_end: list[int] = []
        for c in np.flatnonzero(bad_run).tolist():
            s, e = int(starts[c]), int(ends[c])
            o = on[s:e].tolist()
            f = off[s:e].tolist()
            k = e - s
            gathered = [False] * k
            for i in range(k):
                if gathered[i]:
                    continue
                oi, fi = o[i], f[i]
                last_j = i
                m_idx.append(s + i)
                m_own.append(n_el)
                for j in range(i + 1, k):
                    if o[j] - oi >= tol:
                        break
                    if abs(f[j] - fi) > tol:
                        continue
                    m_idx.append(s + j)
                    m_own.append(n_el)
                    gathered[j] = True
                    last_j = j
                x_on.append(oi)
                x_end.append(oi + (f[last_j] - o[last_j]))
                n_el += 1
        members.append(np.asarray(m_idx, dtype=np.int64))
        owners.append(np.asarray(m_own, dtype=np.int64))
        el_on.append(np.asarray(x_on, dtype=np.int64))
        el_end.append(np.asarray(x_end, dtype=np.int64))
    return (
        np.concatenate(members),
        np.concatenate(owners),
        np.concatenate(el_on),
        np.concatenate(el_end),
    )


_TRACK_KEY: Final = 1 << 40  # separates tracks in integer keys (quantized offsets are < 2**40)


def note_weights(score: symusic.Score, *, quantize: bool = True):
    """All pitched notes as (pitch, onset_12, weight_12), onsets and weights in 1/12 quarter.

    With ``quantize`` (default) these are music21's quantized element offsets and durations
    (see the module doc; a note gathered into two chords appears twice); without, the raw
    onsets and durations. Drum tracks are left out.
    """
    tpq = score.tpq
    arrays = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    if not arrays:
        empty = np.zeros(0)
        return empty.astype(np.int64), empty, empty
    time_ = np.concatenate([a["time"] for a in arrays]).astype(np.int64)
    pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
    # music21 ends a re-struck note at the first note-off after it (symusic: first in, first out)
    dur = np.concatenate([retrigger_ends(a["time"], a["duration"], a["pitch"]) - a["time"] for a in arrays]).astype(
        np.int64
    )
    if not quantize:
        return pitch, time_ * (12.0 / tpq), dur * (12.0 / tpq)
    track = np.repeat(np.arange(len(arrays)), [len(a["time"]) for a in arrays])
    # one pass over all tracks: each track's ticks shifted past the previous track's end
    span = int(max(time_.max() + np.maximum(dur, 0).max(), 0)) + 4 * tpq + 1
    base = track * span
    order = np.lexsort((time_, track))  # stable: file order within a tick, as music21
    on = time_[order] + base[order]
    off = on + dur[order]
    member, owner, e_on, e_end = _gather_chords(on, off, tpq / max(QUANTIZE_DIVISORS))
    # elements in offset order (stable), as s.sort() leaves them
    e_order = np.argsort(e_on, kind="stable")
    rank = np.empty_like(e_order)
    rank[e_order] = np.arange(len(e_order))
    e_on, e_end = e_on[e_order], e_end[e_order]
    e_track = e_on // span
    q_on = _quantize_offsets((e_on - e_track * span) / tpq)
    # look-ahead: the next later quantized offset in the same part (none: gap 0)
    key = e_track * _TRACK_KEY + q_on
    uniq = np.unique(key)
    nxt = np.minimum(np.searchsorted(uniq, key, side="right"), len(uniq) - 1)
    nxt_key = uniq[nxt]
    gap12 = np.where((nxt_key > key) & (nxt_key // _TRACK_KEY == e_track), nxt_key - key, 0)
    length = e_end - e_on
    grace = length == 0
    q_dur = _quantize_durations(np.maximum(length, 0) / tpq, grace, gap12)
    q_dur = np.where(grace, 0, q_dur)
    owner = rank[owner]
    idx = order[member]
    return pitch[idx], q_on[owner].astype(np.float64), q_dur[owner].astype(np.float64)


def pitch_class_histogram(score: symusic.Score, *, quantize: bool = True) -> np.ndarray:
    """Duration (quarterLength) per pitch class over all pitched notes, as music21 builds it."""
    p, _, w = note_weights(score, quantize=quantize)
    return np.bincount(p % 12, weights=w, minlength=12)[:12] / 12.0


# ---------------------------------------------------------------------------------------------
# correlation


def _rotations(weights: np.ndarray) -> np.ndarray:
    """R[i, j] = weights[(j - i) % 12]: the profile with its tonic on pitch class i."""
    idx = (np.arange(12)[None, :] - np.arange(12)[:, None]) % 12
    return weights[idx]


_ROT_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _centered_rotations(profile: str) -> tuple[np.ndarray, np.ndarray]:
    if profile not in _ROT_CACHE:
        major, minor = _check_profile(profile)
        out = []
        for w in (major, minor):
            avg = sum(w.tolist()) / 12  # music21: sum(toneWeights) / len(toneWeights)
            rc = _rotations(w) - avg
            out.append((rc, np.sqrt((rc**2).sum(axis=1))))
        _ROT_CACHE[profile] = (
            np.vstack([out[0][0], out[1][0]]),
            np.concatenate([out[0][1], out[1][1]]),
        )
    return _ROT_CACHE[profile]


def key_correlations(hist: np.ndarray, profile: str = "aarden") -> np.ndarray:
    """Pearson r for the 24 keys: index pc (major) and 12 + pc (minor); 0 where undefined."""
    rc, rnorm = _centered_rotations(profile)
    h = np.asarray(hist, dtype=np.float64)
    hc = h - h.sum() / 12
    hn = math.sqrt(float((hc**2).sum()))
    if hn == 0.0:
        return np.zeros(24)
    return (rc @ hc) / (rnorm * hn)


def _m21_correlations_exact(hist: Sequence[float | Fraction], profile: str) -> list[float]:
    """music21's _getDifference for major then minor, same operations in the same order."""
    out: list[float] = []
    for weights in PROFILES[profile]:
        w = list(weights)
        pa = sum(w) / len(w)
        ha = sum(hist) / len(hist)
        for i in range(12):
            top = bl = br = 0.0
            for j in range(12):
                top = top + ((w[(j - i) % 12] - pa) * (hist[j] - ha))
                br = br + ((w[(j - i) % 12] - pa) ** 2)
                bl = bl + ((hist[j] - ha) ** 2)
            out.append(0.0 if br == 0 or bl == 0 else float(top / ((br * bl) ** 0.5)))
    return out


def _pick(corr: Sequence[float]) -> tuple[int, int]:
    """music21's choice: max of (coefficient, pitch class, mode) with minor > major; runner-up."""
    ranked = sorted(range(24), key=lambda k: (corr[k], k % 12, k // 12), reverse=True)
    return ranked[0], ranked[1]


def _best_key(corr: np.ndarray, profile: str) -> KeyEstimate:
    top2 = np.argpartition(-corr, 1)[:2]
    best, second = int(top2[0]), int(top2[1])
    if corr[second] > corr[best]:
        best, second = second, best
    if corr[best] - corr[second] < NEAR_TIE:
        best, second = _pick(corr.tolist())
    return key_at(best, float(corr[best]), float(corr[best] - corr[second]), profile)


def key_at(index: int, correlation: float, confidence: float, profile: str) -> KeyEstimate:
    """The key numbered ``index`` (0-11 major tonics C..B, 12-23 minor), spelt as music21 does."""
    mode = MODES[index // 12]
    pc = index % 12
    return KeyEstimate(
        tonic=TONIC_NAMES[mode][pc],
        tonic_pc=pc,
        mode=mode,
        correlation=correlation,
        confidence=confidence,
        profile=profile,
    )


def _near_tie(corr: np.ndarray) -> bool:
    top2 = np.partition(corr, 22)[22:]
    return bool(top2[1] - top2[0] < NEAR_TIE)


def key_from_histogram(hist: np.ndarray, profile: str = "aarden") -> KeyEstimate | None:
    """Best of the 24 keys for a pitch-class histogram (quarter lengths); None if all zero."""
    h = np.asarray(hist, dtype=np.float64)
    if h.shape != (12,):
        raise ValueError(f"histogram must have 12 bins, got shape {h.shape}")
    if not (h.sum() > 0):
        return None
    corr = key_correlations(h, profile)
    if _near_tie(corr):
        corr = np.asarray(_m21_correlations_exact(h.tolist(), profile))
    return _best_key(corr, profile)


def _m21_histogram_values(pc: np.ndarray, w12: np.ndarray) -> list:
    """The histogram with music21's Python types, for settling near ties exactly.

    music21 starts every bin at int 0 and adds quarterLengths: a float where the length is a
    multiple of 1/4 (or 0, grace notes), a Fraction otherwise (triplets); int/Fraction + float
    gives a float. So a bin is 0 (no note), an exact Fraction (only triplet lengths) or a
    float (otherwise; exact unless both kinds meet, where music21's summation order is not
    replayed).
    """
    counts = np.bincount(pc, weights=w12, minlength=12)[:12]
    touched = np.bincount(pc, minlength=12)[:12] > 0
    floaty = np.bincount(pc[np.rint(w12).astype(np.int64) % 3 == 0], minlength=12)[:12] > 0
    out: list = []
    for c, t, f in zip(np.rint(counts).astype(np.int64).tolist(), touched.tolist(), floaty.tolist()):
        out.append(0 if not t else (c / 12 if f else Fraction(c, 12)))
    return out


def estimate_key(score: symusic.Score, profile: Profile = "aarden") -> KeyEstimate | None:
    """Key of the whole piece as music21's ``analyze('key')`` (with ``profile``) would find it.

    None when the score has no pitched note of non-zero (quantized) length.
    """
    _check_profile(profile)
    p, _, w = note_weights(score)
    return estimate_key_from_weights(p, w, profile)


def estimate_key_from_weights(p: np.ndarray, w: np.ndarray, profile: Profile = "aarden") -> KeyEstimate | None:
    """:func:`estimate_key` on pitches and weights from :func:`note_weights` (compute them once
    for several profiles)."""
    _check_profile(profile)
    pc = p % 12
    hist = np.bincount(pc, weights=w, minlength=12)[:12] / 12.0
    if not (hist.sum() > 0):
        return None
    corr = key_correlations(hist, profile)
    if _near_tie(corr):
        corr = np.asarray(_m21_correlations_exact(_m21_histogram_values(pc, w), profile))
    return _best_key(corr, profile)


# ---------------------------------------------------------------------------------------------
# bars, windows, declared key


def time_signature_changes(score: symusic.Score) -> list[tuple[int, int, int]]:
    """``(tick, numerator, denominator)`` of each time signature in time order, 4/4 at tick 0 when
    none is there; invalid ones (a zero or negative part) are skipped."""
    ts = score.time_signatures.numpy()
    changes = [(0, 4, 4)]
    for t, num, den in zip(ts["time"].tolist(), ts["numerator"].tolist(), ts["denominator"].tolist()):
        if num <= 0 or den <= 0:
            continue
        if t <= 0:
            changes = [(0, num, den)]
        else:
            changes.append((t, num, den))
    changes.sort(key=lambda c: c[0])
    return changes


def bar_starts(score: symusic.Score, end: int | None = None) -> np.ndarray:
    """Tick of every bar line up to ``end`` (default: score end), from the time signatures.

    A bar runs ``numerator * 4 / denominator`` quarters; a time signature that falls inside a bar
    starts a new bar there (as MIDI files written by notation programs do). Without any time
    signature, or before the first one, 4/4 is assumed.
    """
    tpq = score.tpq
    stop = int(score.end()) if end is None else int(end)
    changes = time_signature_changes(score)
    out: list[int] = []
    for k, (t0, num, den) in enumerate(changes):
        t1 = changes[k + 1][0] if k + 1 < len(changes) else max(stop, t0 + 1)
        length = max(1, round(tpq * 4 * num / den))
        out.extend(range(t0, t1, length))
    return np.asarray(sorted(set(out)), dtype=np.int64)


def windowed_keys(score: symusic.Score, bars: int = 8, profile: Profile = "aarden") -> list[WindowKey]:
    """Key of every ``bars``-bar window (non-overlapping), notes clipped to their window.

    Uses the same quantized note weights as :func:`estimate_key`; a note held across a window
    boundary counts in each window for the part it sounds there.
    """
    if isinstance(bars, bool) or not isinstance(bars, int) or bars < 1:
        raise ValueError(f"bars must be a positive integer, got {bars!r}")
    _check_profile(profile)
    tpq = score.tpq
    p, on12, w12 = note_weights(score)
    end_tick = int(score.end())
    lines = bar_starts(score, end_tick)
    bounds = [*lines[::bars].tolist(), max(end_tick, int(lines[-1]) + 1)]
    out: list[WindowKey] = []
    pc = p % 12
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        a12, b12 = a * 12.0 / tpq, b * 12.0 / tpq
        part = np.clip(np.minimum(on12 + w12, b12) - np.maximum(on12, a12), 0.0, None)
        hist = np.bincount(pc, weights=part, minlength=12)[:12] / 12.0
        out.append(WindowKey(bar=k * bars, n_bars=bars, start=a, end=b, key=key_from_histogram(hist, profile)))
    return out


def declared_key(score: symusic.Score) -> DeclaredKey | None:
    """The first key signature meta event, or None; ``n_changes`` counts later different ones.

    Many sequencers write a default C major signature, so this says what the file declares, not
    what it sounds like.
    """
    ks = score.key_signatures.numpy()
    if len(ks["time"]) == 0:
        return None
    order = np.argsort(ks["time"], kind="stable")
    keys = ks["key"][order].astype(int).tolist()
    tonal = ks["tonality"][order].astype(int).tolist()
    times = ks["time"][order].astype(int).tolist()
    sharps, minor = keys[0], tonal[0]
    if not -7 <= sharps <= 7:
        return None
    mode: Mode = "minor" if minor else "major"
    tonic = _SIG_TONICS[mode][sharps + 7]
    n_changes = sum(1 for k, t in zip(keys[1:], tonal[1:]) if (k, t) != (sharps, minor))
    return DeclaredKey(
        tonic=tonic,
        tonic_pc=pc_name_to_pc(tonic),
        mode=mode,
        sharps=sharps,
        time=times[0],
        n_changes=n_changes,
    )


# ---------------------------------------------------------------------------------------------
# music21 backend and the agreement measurement


def estimate_key_music21(source: str | Path | bytes, profile: Profile = "aarden") -> KeyEstimate:
    """Exact backend: music21's own ``converter.parse`` and key analysis (seconds per file)."""
    _check_profile(profile)
    from music21 import converter
    from music21.analysis import discrete

    if isinstance(source, (bytes, bytearray)):
        stream = converter.parseData(bytes(source), format="midi", forceSource=True)
    else:
        stream = converter.parse(Path(source), format="midi", forceSource=True)
    if profile == "aarden":
        k = stream.analyze("key")
    else:
        k = getattr(discrete, M21_CLASSES[profile])().getSolution(stream)
    alts = [a.correlationCoefficient for a in (k.alternateInterpretations or [])]
    corr = float(k.correlationCoefficient)
    return KeyEstimate(
        tonic=k.tonic.name.replace("-", "b"),
        tonic_pc=int(k.tonic.pitchClass),
        mode=k.mode,
        correlation=corr,
        confidence=float(corr - max(alts)) if alts else 0.0,
        profile=profile,
    )


def agreement_corpus(data_root: str | Path) -> list[Path]:
    """The MIDI files the agreement is measured on: midi/, lakh/, lakh_derived/, mutopia/ftp/."""
    root = Path(data_root)
    out: list[Path] = []
    for sub in ("midi", "lakh", "lakh_derived", "mutopia/ftp"):
        out.extend(
            p
            for p in sorted((root / sub).rglob("*"))
            if p.is_file() and p.suffix.lower() in (".mid", ".midi", ".kar", ".rmi")
        )
    return out


def measure_agreement(paths: Iterable[str | Path], profile: Profile = "aarden", *, repeat: int = 3) -> dict:
    """Agreement (same tonic pitch class and mode) with music21, and the speed of both.

    Files symusic cannot parse, without pitched notes, or that music21 refuses are skipped
    (listed in ``skipped`` with the reason). ``ours_s`` is the total of symusic parse from bytes
    + :func:`estimate_key` (best of ``repeat`` runs per file); ``music21_s`` the total of
    ``converter.parse`` + analysis; ``speedup`` their ratio, ``per_piece_speedup`` the
    quantiles of the per-file ratios (small files gain least: music21 needs ~20 ms for them).
    """
    import symusic

    n = agree = 0
    ours_s = m21_s = 0.0
    skipped: list[tuple[str, str]] = []
    disagreements: list[dict] = []
    ratios: list[float] = []
    for path in paths:
        path = Path(path)
        data = path.read_bytes()
        try:
            score = symusic.Score.from_midi(data)
        except Exception as exc:  # noqa: BLE001 - symusic raises RuntimeError/ValueError; recorded
            skipped.append((str(path), f"symusic: {type(exc).__name__}: {exc}"))
            continue
        if not any(not t.is_drum and len(t.notes) for t in score.tracks):
            skipped.append((str(path), "no pitched notes"))
            continue
        best = math.inf
        ours = None
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            ours = estimate_key(symusic.Score.from_midi(data), profile)
            best = min(best, time.perf_counter() - t0)
        try:
            t0 = time.perf_counter()
            theirs = estimate_key_music21(data, profile)
            spent = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - music21 failures are recorded, not hidden
            skipped.append((str(path), f"music21: {type(exc).__name__}: {exc}"))
            continue
        m21_s += spent
        ours_s += best
        ratios.append(spent / best)
        n += 1
        same = ours is not None and (ours.tonic_pc, ours.mode) == (theirs.tonic_pc, theirs.mode)
        agree += same
        if not same:
            disagreements.append(
                {
                    "path": str(path),
                    "ours": ours.name if ours else None,
                    "ours_r": ours.correlation if ours else None,
                    "ours_margin": ours.confidence if ours else None,
                    "music21": theirs.name,
                    "music21_r": theirs.correlation,
                }
            )
    return {
        "n": n,
        "agree": agree,
        "rate": agree / n if n else float("nan"),
        "ours_s": ours_s,
        "music21_s": m21_s,
        "speedup": m21_s / ours_s if ours_s else float("nan"),
        "per_piece_speedup": {
            q: float(np.quantile(ratios, v)) if ratios else float("nan")
            for q, v in (("min", 0.0), ("p10", 0.1), ("median", 0.5), ("max", 1.0))
        },
        "profile": profile,
        "disagreements": disagreements,
        "skipped": skipped,
    }
