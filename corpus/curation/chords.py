"""Chord labels: root, quality and bass per beat from the sounding pitch classes (rule ``chords-v1``).

Per beat of the piece's metrical grid (:func:`beat_bounds`: a quarter note, a dotted quarter in
compound meters such as 6/8, from the time signatures, shifted by :func:`beat_phase` when most
onsets fall off the written grid at one phase):

* **chroma**: every pitched note (drums excluded) adds its duration *inside the beat* to its
  pitch class (:func:`beat_chroma`, vectorized over (note, beat) pairs);
* **bass**: the lowest pitch among the notes that sound at least ``BASS_MIN_SHARE`` of the beat
  (the lowest of any note when none does);
* **template matching** (:func:`beat_scores`): cosine of the chroma (plus ``BASS_WEIGHT`` on the
  bass pitch class; 0 by default) with the 12 rotations of each quality's template in
  :data:`QUALITIES`, minus ``MISSING_COST`` per chord tone under ``MISSING_SHARE`` of the beat,
  plus ``ROOT_BASS_BONUS`` when the root is the bass and ``BASS_TONE_BONUS`` when the bass is
  a chord tone, plus a prior per quality that favours triads (:data:`PRIOR`). ``N`` (no chord)
  when a beat has under ``MIN_PCS`` pitch classes sounding or no chord scores ``N_SCORE``;
* **smoothing**: a Viterbi path over the beats with a cost ``SWITCH_COST`` per change of label,
  so a passing tone does not flip a beat; equal consecutive beats are then merged into one
  *harmonic change* (:class:`Segment`).

Vocabulary (``quality``): ``maj min dim aug sus2 sus4 maj7 min7 7 dim7 hdim7`` and ``N``.
Parameters were chosen on the odd-numbered POP909 songs only (``../shared/arrangements``), by a
coordinate search over a small grid of each; among settings within a point of the best majmin
accuracy, the one that names sevenths most often (bass as a bonus, not a weight) was kept.
:mod:`corpus.bench_chords` reports the even-numbered songs separately.

Roman numerals (:func:`degree`) are relative to the piece's key (``key_tonic_pc``, ``key_mode``):
the scale step of the root in the key's own scale (major, or natural minor), with ``b``/``#``
for roots outside it (``bVII`` in major, ``#VII`` for the leading tone in minor); upper case for
chords with a major third (maj, aug, 7, maj7, sus2, sus4), lower case for minor-third chords;
``o`` marks diminished, ``+`` augmented. ``degree`` is that numeral alone (``I``, ``vi``,
``viio``): progressions are written as degrees joined by ``-`` (``I-V-vi-IV``); ``roman`` adds
the seventh (``V7``, ``IVmaj7``, ``ii7``, ``viio7``, ``viih7`` half-diminished).

Per piece (:func:`summarize`): ``chord_progression`` is the most frequent run of 4 consecutive
degrees (N removed, equal neighbours merged; ties go to the one heard first) and
``chord_change_rate`` the changes of label per beat.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from corpus.curation import key

if TYPE_CHECKING:
    import symusic

CHORD_RULE: Final = "chords-v1"
PC_NAMES: Final = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# quality -> pitch classes above the root; the order is the tie order (first wins)
QUALITIES: Final[dict[str, tuple[int, ...]]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "7": (0, 4, 7, 10),
    "min7": (0, 3, 7, 10),
    "maj7": (0, 4, 7, 11),
    "sus4": (0, 5, 7),
    "sus2": (0, 2, 7),
    "dim": (0, 3, 6),
    "aug": (0, 4, 8),
    "hdim7": (0, 3, 6, 10),
    "dim7": (0, 3, 6, 9),
}
MAJOR_THIRD: Final = frozenset({"maj", "aug", "7", "maj7", "sus2", "sus4"})

# parameters (chosen on the odd-numbered POP909 songs; see the module docstring)
BASS_MIN_SHARE: Final = 0.25  # a note sounds this share of the beat to count as the bass
BASS_WEIGHT: Final = 0.0  # added to the bass pitch class, as a share of the beat's chroma
ROOT_BASS_BONUS: Final = 0.1  # added to a chord whose root is the bass
BASS_TONE_BONUS: Final = 0.1  # added to a chord that has the bass among its tones
PRIOR: Final[dict[str, float]] = {
    "maj": 0.0,
    "min": 0.0,
    "7": -0.04,
    "min7": -0.04,
    "maj7": -0.04,
    "sus4": -0.16,
    "sus2": -0.16,
    "dim": -0.16,
    "aug": -0.24,
    "hdim7": -0.16,
    "dim7": -0.24,
}
MISSING_SHARE: Final = 0.02  # a chord tone under this share of the beat's chroma is missing
MISSING_COST: Final = 0.05  # subtracted per missing chord tone
N_SCORE: Final = 0.55  # the score of "no chord": a chord must match better
MIN_PCS: Final = 2  # fewer distinct pitch classes (>= 5% of the beat's chroma) in a beat: N
SWITCH_COST: Final = 0.12  # Viterbi cost of a change of label
PHASE_BINS: Final = 48  # bins per beat of the onset phase histogram (beat_phase)
PHASE_DOMINANCE: Final = 2.0  # a shifted grid needs this many times the onsets of the written one

MAJOR_STEPS: Final = ("I", "bII", "II", "bIII", "III", "IV", "#IV", "V", "bVI", "VI", "bVII", "VII")
MINOR_STEPS: Final = ("I", "bII", "II", "III", "#III", "IV", "#IV", "V", "VI", "#VI", "VII", "#VII")
SEVENTH_SUFFIX: Final = {"7": "7", "min7": "7", "maj7": "maj7", "dim7": "7", "hdim7": "h7"}


@dataclass(frozen=True)
class Params:
    """The tunable parameters (defaults: the module constants)."""

    bass_min_share: float = BASS_MIN_SHARE
    bass_weight: float = BASS_WEIGHT
    root_bass_bonus: float = ROOT_BASS_BONUS
    n_score: float = N_SCORE
    min_pcs: int = MIN_PCS
    switch_cost: float = SWITCH_COST
    prior_scale: float = 1.0
    missing_cost: float = MISSING_COST
    bass_tone_bonus: float = BASS_TONE_BONUS


@dataclass(frozen=True)
class Segment:
    """One harmonic change: ``n_beats`` equal beats from beat ``start_beat``."""

    start_beat: int
    n_beats: int
    start: float  # in the unit of the beat bounds (ticks for a score)
    end: float
    root_pc: int | None  # None for N
    quality: str  # a QUALITIES key or "N"
    bass_pc: int | None
    score: float  # mean template score of its beats (cosine + bonuses)


# ------------------------------------------------------------------------------ the grid
def beat_phase(onsets: np.ndarray, length: int, bins: int = PHASE_BINS) -> int:
    """The offset (ticks, ``0 <= offset < length``) of the beat grid that most onsets fall on.

    Files whose notes were entered on the grid give 0. Recorded files with a constant tempo can
    have every beat shifted (POP909: notes on the grid, but the grid starts 0.6 beat early): the
    onsets are folded onto one beat (``bins`` bins, smoothed 1-2-1 circularly) and the fullest bin
    wins; the offset is the mean phase of the onsets within a bin of it. A peak within one bin of
    0, or not ``PHASE_DOMINANCE`` times fuller than the bin at 0, keeps the grid as written
    (in music entered on the grid the beat is at least as full as any subdivision).
    """
    if len(onsets) == 0 or length <= 1:
        return 0
    ph = (np.asarray(onsets, dtype=np.int64) % length) / length
    h = np.bincount(np.minimum((ph * bins).astype(np.int64), bins - 1), minlength=bins).astype(np.float64)
    h = 2 * h + np.roll(h, 1) + np.roll(h, -1)
    peak = int(h.argmax())
    if peak <= 1 or peak >= bins - 1 or h[peak] < PHASE_DOMINANCE * h[0]:
        return 0
    d = ph - (peak + 0.5) / bins
    near = np.abs(d) <= 1.5 / bins
    off = (peak + 0.5) / bins + float(d[near].mean()) if near.any() else (peak + 0.5) / bins
    return int(round(off * length)) % length


def beat_bounds(score: symusic.Score, onsets: np.ndarray | None = None) -> np.ndarray:
    """Beat boundaries in ticks (beats + 1 values) up to the end of the last note.

    A beat is ``4 / denominator`` quarters, or three of them in compound meters (6/8, 9/8,
    12/8, 6/16...); a time signature restarts the grid where it falls. 4/4 before the first.
    With ``onsets`` (ticks of the pitched notes), each stretch of one time signature is shifted
    by :func:`beat_phase` of its onsets (a partial beat then opens the stretch).
    """
    tpq = score.tpq
    stop = int(score.end())
    changes = key.time_signature_changes(score)
    out: list[np.ndarray] = []
    for k, (t0, num, den) in enumerate(changes):
        t1 = changes[k + 1][0] if k + 1 < len(changes) else stop
        if t1 <= t0:
            continue
        unit = tpq * 4 / den
        if den >= 8 and num % 3 == 0 and num > 3:
            unit *= 3
        length = max(1, round(unit))
        shift = 0
        if onsets is not None:
            on = onsets[(onsets >= t0) & (onsets < t1)]
            shift = beat_phase(on - t0, length)
        out.append(np.arange(t0 + shift, t1, length, dtype=np.int64))
        if shift:
            out.append(np.array([t0], dtype=np.int64))
    if not out:
        return np.zeros(0, dtype=np.int64)
    starts = np.unique(np.concatenate(out))
    return np.append(starts, max(stop, int(starts[-1]) + 1))


def pitched_notes(score: symusic.Score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, pitch) of every note of the non-drum tracks, in ticks."""
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    start = np.concatenate([p["time"] for p in parts]).astype(np.int64)
    end = start + np.concatenate([p["duration"] for p in parts]).astype(np.int64)
    pitch = np.concatenate([p["pitch"] for p in parts]).astype(np.int64)
    return start, end, pitch


def beat_chroma(
    start: np.ndarray, end: np.ndarray, pitch: np.ndarray, bounds: np.ndarray, bass_min_share: float = BASS_MIN_SHARE
) -> tuple[np.ndarray, np.ndarray]:
    """Per beat: the duration of each pitch class inside it (beats x 12) and the bass pitch (-1: none)."""
    n_beats = max(len(bounds) - 1, 0)
    chroma = np.zeros((n_beats, 12))
    bass = np.full(n_beats, -1, dtype=np.int64)
    if n_beats == 0 or len(start) == 0:
        return chroma, bass
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    keep = end > start
    start, end, pitch = start[keep], end[keep], np.asarray(pitch)[keep]
    first = np.clip(np.searchsorted(bounds, start, "right") - 1, 0, n_beats - 1)
    last = np.clip(np.searchsorted(bounds, end, "left") - 1, 0, n_beats - 1)
    span = np.maximum(last - first + 1, 0)
    note = np.repeat(np.arange(len(start)), span)
    offs = np.arange(len(note)) - np.repeat(np.cumsum(span) - span, span)
    beat = first[note] + offs
    ov = np.minimum(end[note], bounds[beat + 1]) - np.maximum(start[note], bounds[beat])
    ok = ov > 0
    note, beat, ov = note[ok], beat[ok], ov[ok]
    p = pitch[note]
    chroma = np.bincount(beat * 12 + p % 12, weights=ov, minlength=n_beats * 12).reshape(n_beats, 12)
    # bass: the lowest pitch held long enough in the beat; else the lowest at all
    length = (bounds[1:] - bounds[:-1])[beat]
    held = ov >= bass_min_share * length
    for sel in (~held, held):  # the held notes are written last, so they win where they exist
        if not sel.any():
            continue
        b, q = beat[sel], p[sel]
        order = np.lexsort((q, b))
        b, q = b[order], q[order]
        head = np.r_[True, b[1:] != b[:-1]]
        bass[b[head]] = q[head]
    return chroma, bass


# ------------------------------------------------------------------------------ matching
def _templates() -> tuple[np.ndarray, list[tuple[int, str]]]:
    rows, states = [], []
    for q, ivs in QUALITIES.items():
        base = np.zeros(12)
        base[list(ivs)] = 1.0
        base /= np.linalg.norm(base)
        for r in range(12):
            rows.append(np.roll(base, r))
            states.append((r, q))
    return np.array(rows), states


TEMPLATES, STATES = _templates()
_ROOTS = np.array([r for r, _ in STATES])
_PRIORS = np.array([PRIOR[q] for _, q in STATES])
_TONES = (TEMPLATES > 0).astype(np.float64)  # states x 12: the chord tones


def beat_scores(chroma: np.ndarray, bass: np.ndarray, params: Params = Params()) -> np.ndarray:
    """Score of every (root, quality) state per beat, plus N as the last column (beats x 133).

    cosine(chroma, template) - missing_cost * missing chord tones + prior + bass terms, as one
    matrix product (chroma and "tone missing" flags x weights) and one row gather (bass terms).
    """
    n = len(chroma)
    if n == 0:
        return np.zeros((0, len(STATES) + 1))
    total = chroma.sum(axis=1)
    share = chroma / np.where(total > 0, total, 1.0)[:, None]
    has_bass = bass >= 0
    c = share
    if params.bass_weight:
        c = share.copy()
        c[np.flatnonzero(has_bass), bass[has_bass] % 12] += params.bass_weight
    norm = np.linalg.norm(c, axis=1)
    feats = np.concatenate([c / np.where(norm > 0, norm, 1.0)[:, None], share < MISSING_SHARE], axis=1)
    weights = np.concatenate([TEMPLATES.T, -params.missing_cost * _TONES.T])  # 24 x states
    # per bass pitch class (row 12: no bass): root = bass, bass among the tones, and the priors
    bass_terms = np.zeros((13, len(STATES)))
    bass_terms[:12] = params.root_bass_bonus * (np.arange(12)[:, None] == _ROOTS[None, :])
    bass_terms[:12] += params.bass_tone_bonus * _TONES.T
    bass_terms += params.prior_scale * _PRIORS[None, :]
    # einsum, not @: a small product, where BLAS threads cost 100x on a loaded machine
    s = np.einsum("bk,ks->bs", feats, weights) + bass_terms[np.where(has_bass, bass % 12, 12)]
    empty = (share >= 0.05).sum(axis=1) < params.min_pcs
    s[empty] = -1.0
    return np.concatenate([s, np.where(empty, 1.0, params.n_score)[:, None]], axis=1)


def viterbi(scores: np.ndarray, switch_cost: float) -> np.ndarray:
    """The best state path: sum of scores minus ``switch_cost`` per change of state."""
    n, k = scores.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    back = np.zeros((n, k), dtype=np.int64)
    acc = scores[0].copy()
    idx = np.arange(k)
    for t in range(1, n):
        best = int(acc.argmax())
        switch = acc[best] - switch_cost
        stay = acc >= switch
        back[t] = np.where(stay, idx, best)
        acc = np.where(stay, acc, switch) + scores[t]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(acc.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def label_beats(chroma: np.ndarray, bass: np.ndarray, params: Params = Params()) -> tuple[np.ndarray, np.ndarray]:
    """Per beat: the state index (``len(STATES)`` = N) and its score."""
    s = beat_scores(chroma, bass, params)
    path = viterbi(s, params.switch_cost)
    return path, s[np.arange(len(path)), path] if len(path) else np.zeros(0)


def segments(path: np.ndarray, score: np.ndarray, bass: np.ndarray, bounds: np.ndarray) -> list[Segment]:
    """Merge equal consecutive beats into harmonic changes (the bass of a change: of its first beat)."""
    out: list[Segment] = []
    if len(path) == 0:
        return out
    cut = np.flatnonzero(np.r_[True, path[1:] != path[:-1]])
    ends = np.r_[cut[1:], len(path)]
    for a, b in zip(cut.tolist(), ends.tolist()):
        st = int(path[a])
        if st >= len(STATES):
            root, q, bpc = None, "N", None
        else:
            root, q = STATES[st]
            bpc = int(bass[a] % 12) if bass[a] >= 0 else None
        out.append(Segment(a, b - a, float(bounds[a]), float(bounds[b]), root, q, bpc, float(score[a:b].mean())))
    return out


def chords_from_notes(
    start: np.ndarray, end: np.ndarray, pitch: np.ndarray, bounds: np.ndarray, params: Params = Params()
) -> list[Segment]:
    """The harmonic changes of notes over the given beat bounds (any time unit)."""
    chroma, bass = beat_chroma(start, end, pitch, bounds, params.bass_min_share)
    path, sc = label_beats(chroma, bass, params)
    return segments(path, sc, bass, bounds)


# ------------------------------------------------------------------------------ names
def label(seg: Segment) -> str:
    """``C:maj``, ``A:min7/G`` (slash: the bass when it is not the root), or ``N``."""
    if seg.root_pc is None:
        return "N"
    s = f"{PC_NAMES[seg.root_pc]}:{seg.quality}"
    if seg.bass_pc is not None and seg.bass_pc != seg.root_pc:
        s += f"/{PC_NAMES[seg.bass_pc]}"
    return s


def degree(root_pc: int | None, quality: str, tonic_pc: int | None, mode: str | None) -> str | None:
    """The Roman numeral of the root in the key, without the seventh (``I``, ``vi``, ``bVII``, ``viio``)."""
    if root_pc is None or tonic_pc is None or mode not in ("major", "minor"):
        return None
    steps = MAJOR_STEPS if mode == "major" else MINOR_STEPS
    num = steps[(root_pc - tonic_pc) % 12]
    if quality not in MAJOR_THIRD:
        acc = num.rstrip("IV")
        num = acc + num[len(acc) :].lower()
    if quality in ("dim", "dim7"):
        num += "o"
    elif quality == "aug":
        num += "+"
    return num


def roman(root_pc: int | None, quality: str, tonic_pc: int | None, mode: str | None) -> str | None:
    """:func:`degree` with the seventh: ``V7``, ``IVmaj7``, ``ii7``, ``viio7``, ``viih7``."""
    d = degree(root_pc, quality, tonic_pc, mode)
    if d is None:
        return None
    if quality == "hdim7":
        return d + "h7"
    return d + SEVENTH_SUFFIX.get(quality, "")


def summarize(degrees: list[str | None], n_beats: int, n_segments: int) -> dict[str, Any]:
    """Per-piece columns: most frequent 4-degree progression, its count, changes per beat."""
    seq: list[str] = []
    for d in degrees:
        if d is not None and (not seq or seq[-1] != d):
            seq.append(d)
    grams = ["-".join(seq[i : i + 4]) for i in range(len(seq) - 3)]
    prog, count = None, None
    if grams:
        counts = Counter(grams)
        first = {}
        for i, g in enumerate(grams):
            first.setdefault(g, i)
        prog = max(counts, key=lambda g: (counts[g], -first[g]))
        count = counts[prog]
    return {
        "chord_rule": CHORD_RULE,
        "chord_change_rate": (max(n_segments - 1, 0) / n_beats) if n_beats else None,
        "chord_progression": prog,
        "chord_progression_count": count,
    }


def tick_seconds(score: symusic.Score, ticks: np.ndarray) -> np.ndarray:
    """Seconds at the given ticks, from the score's tempo map (120 bpm before the first tempo)."""
    tp = score.tempos.numpy()
    times = np.asarray(tp["time"], dtype=np.float64)
    mspq = np.asarray(tp["mspq"], dtype=np.float64)
    if len(times) == 0 or times[0] > 0:
        times = np.r_[0.0, times]
        mspq = np.r_[500000.0, mspq]
    sec_per_tick = mspq / 1e6 / score.tpq
    at = np.r_[0.0, np.cumsum(np.diff(times) * sec_per_tick[:-1])]
    t = np.asarray(ticks, dtype=np.float64)
    i = np.clip(np.searchsorted(times, t, "right") - 1, 0, len(times) - 1)
    return at[i] + (t - times[i]) * sec_per_tick[i]


def score_segments(score: symusic.Score, params: Params = Params()) -> tuple[list[Segment], int]:
    """The harmonic changes of a score on its beat grid (:func:`beat_bounds`, ticks), and its beats."""
    start, end, pitch = pitched_notes(score)
    bounds = beat_bounds(score, start)
    segs = chords_from_notes(start, end, pitch, bounds, params) if len(bounds) > 1 else []
    return segs, max(len(bounds) - 1, 0)


def piece_chords(
    score: symusic.Score,
    piece_id: str,
    tonic_pc: int | None,
    mode: str | None,
    params: Params = Params(),
    segmented: tuple[list[Segment], int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``chords`` rows of a piece (one per harmonic change) and its summary columns.

    ``segmented``: :func:`score_segments` of ``score`` with ``params``, when the caller has it.
    """
    segs, n_beats = score_segments(score, params) if segmented is None else segmented
    secs = tick_seconds(score, np.array([[s.start, s.end] for s in segs]).reshape(-1)) if segs else []
    rows = []
    for i, s in enumerate(segs):
        rows.append(
            {
                "piece_id": piece_id,
                "chord_index": i,
                "start_beat": s.start_beat,
                "n_beats": s.n_beats,
                "start_tick": int(s.start),
                "end_tick": int(s.end),
                "start_s": float(secs[2 * i]),
                "end_s": float(secs[2 * i + 1]),
                "root_pc": s.root_pc,
                "root": PC_NAMES[s.root_pc] if s.root_pc is not None else None,
                "quality": s.quality,
                "bass_pc": s.bass_pc,
                "label": label(s),
                "degree": degree(s.root_pc, s.quality, tonic_pc, mode),
                "roman": roman(s.root_pc, s.quality, tonic_pc, mode),
                "score": round(s.score, 6),
            }
        )
    summary = summarize([r["degree"] for r in rows], n_beats, len(rows))
    return rows, summary
