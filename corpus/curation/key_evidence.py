"""The default key estimate: several kinds of evidence, not one histogram.

music21's ``analyze('key')`` (reproduced by :func:`corpus.curation.key.estimate_key`) correlates
one duration-weighted pitch-class histogram with a key profile. Its misses are mostly the
relative major/minor and the fifth above or below, which the histogram alone cannot tell apart
(the same seven notes). This module scores the 24 keys with more evidence, each a 24-vector:

* ``hist``: Pearson r of the whole-piece histogram with the profile (music21's evidence);
* ``bass``: the same for the lowest sounding pitch, sampled every 16th (the bass states the
  tonic far more often than the upper voices do);
* ``final_bass`` / ``first_bass``: 1 for the two keys whose tonic is the lowest pitch class of
  the last / first two beats (pieces end, and often start, on the tonic);
* ``final_chord``: how well the pitch classes of the last two beats fit the key's tonic triad
  (share of the triad minus share of the other mode's third), which separates C major from
  A minor where the histogram cannot;
* ``declared``: 1 for the two keys of the file's key signature (major and relative minor) when
  the file looks notation-made (onsets on a 16th/triplet grid) and the signature agrees with
  the music (its keys are among the histogram's best four); many sequencers write a default
  C major signature, which this test keeps out;
* ``sections``: the share of 8-bar windows whose own (histogram) key is this key.

The key is the argmax of the weighted sum (:data:`DEFAULT_WEIGHTS`, chosen on the tuning halves of
the labelled sets in :mod:`corpus.curation.key_labels` by cross-validation, see
:func:`~corpus.curation.key_labels.select_weights`; held-out halves are reported apart by
``midicorpus bench``). ``evidence-v2`` (this rule) keeps one weight, shared by the three tonic
cues (``final_bass``, ``final_chord``, ``first_bass``); the other rows are still measured (and
kept by callers that store the matrix) but weigh nothing: ``evidence-v1``'s six separately
fitted weights cross-validated worse (see the README, "Key accuracy against human labels"). ``confidence`` is the margin of the best score over the runner-up, in
the units of a correlation (the histogram weight is 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

import numpy as np

from corpus.curation.key import (
    MODES,
    KeyEstimate,
    Profile,
    WindowKey,
    declared_key,
    key_at,
    key_correlations,
    note_weights,
    windowed_keys,
)

if TYPE_CHECKING:
    import symusic

KEY_METHOD: Final = "evidence-v2"  # stored in piece_analysis.key_profile for the default estimate
EVIDENCE: Final = ("hist", "bass", "final_bass", "final_chord", "first_bass", "declared", "sections")
GRID_SHARE_NOTATED: Final = 0.95  # onsets on the 16th/triplet grid at or above this: notation-made
TAIL_FRAMES: Final = 8  # two beats of 16ths: the "final" and "first" harmony
MAX_FRAME_CELLS: Final = 20_000_000  # note x 16th cells; a coarser grid above this


@dataclass(frozen=True, slots=True)
class KeyWeights:
    """Weight of each kind of evidence in the sum (``hist`` is the unit)."""

    hist: float = 1.0
    bass: float = 0.0
    final_bass: float = 0.0
    final_chord: float = 0.0
    first_bass: float = 0.0
    declared: float = 0.0
    sections: float = 0.0

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)


# key_labels.select_weights on the tuning halves (even ids) of every labelled set: the family with
# one weight shared by the tonic cues (fewest weights within one standard error of the best
# cross-validated family), fitted on all tuning halves.
DEFAULT_WEIGHTS: Final = KeyWeights(final_bass=0.1, final_chord=0.1, first_bass=0.1)


@dataclass(frozen=True, slots=True)
class KeyEvidence:
    """The 24-key evidence matrix (rows in :data:`EVIDENCE` order; key index pc, 12 + pc minor)."""

    matrix: np.ndarray  # (len(EVIDENCE), 24)
    notated: bool  # onsets on the grid: the declared signature may count
    declared_agrees: bool  # the signature's keys are among the histogram's best four


def _tonic_indicator(pc: int | None) -> np.ndarray:
    v = np.zeros(24)
    if pc is not None:
        v[pc] = v[12 + pc] = 1.0
    return v


def _triad_fit(pcw: np.ndarray) -> np.ndarray:
    """Per key: share of the weight on its tonic triad minus the share on the other mode's third."""
    total = float(pcw.sum())
    out = np.zeros(24)
    if total <= 0:
        return out
    s = pcw / total
    for t in range(12):
        fifth = s[(t + 7) % 12]
        out[t] = s[t] + s[(t + 4) % 12] + fifth - s[(t + 3) % 12]
        out[12 + t] = s[t] + s[(t + 3) % 12] + fifth - s[(t + 4) % 12]
    return out


def _frames(score: symusic.Score) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Per 16th frame: lowest sounding pitch (-1: silence); per (note frame): pitch and frame index."""
    ps, ss, es = [], [], []
    for tr in score.tracks:
        if tr.is_drum or len(tr.notes) == 0:
            continue
        a = tr.notes.numpy()
        ps.append(a["pitch"].astype(np.int64))
        ss.append(a["time"].astype(np.int64))
        es.append(a["time"].astype(np.int64) + np.maximum(a["duration"].astype(np.int64), 0))
    if not ps:
        return None
    p, s, e = np.concatenate(ps), np.concatenate(ss), np.concatenate(es)
    step = max(1, score.tpq // 4)
    while True:
        f0 = s // step
        f1 = np.maximum(f0 + 1, -(-e // step))
        n = f1 - f0
        if int(n.sum()) <= MAX_FRAME_CELLS:
            break
        step *= 2
    total = int(n.sum())
    rep = np.repeat(np.arange(len(p)), n)
    offs = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    fidx = f0[rep] + offs
    nf = int(f1.max()) + 1
    low = np.full(nf, 1 << 20, dtype=np.int64)
    np.minimum.at(low, fidx, p[rep])
    low[low == 1 << 20] = -1
    return low, p[rep], fidx, step


def _grid_share(score: symusic.Score) -> float:
    tpq = score.tpq
    on = [tr.notes.numpy()["time"] for tr in score.tracks if not tr.is_drum and len(tr.notes)]
    if not on or tpq < 12:
        return 0.0
    t = np.concatenate(on).astype(np.float64) / tpq
    tol = 1.0 / 48
    d4 = np.abs(t * 4 - np.rint(t * 4)) / 4
    d3 = np.abs(t * 3 - np.rint(t * 3)) / 3
    return float(np.mean(np.minimum(d4, d3) <= tol / 2 + 1e-12))


def key_evidence(
    score: symusic.Score,
    *,
    profile: Profile = "aarden",
    weights_cache: tuple[np.ndarray, np.ndarray] | None = None,
    windows: list[WindowKey] | None = None,
) -> KeyEvidence | None:
    """The evidence matrix of ``score``; None when it has no pitched note of non-zero length.

    ``weights_cache``: ``(pitches, weights)`` from :func:`corpus.curation.key.note_weights`, and
    ``windows`` from :func:`corpus.curation.key.windowed_keys`, when the caller has them already.
    """
    if weights_cache is None:
        pitches, _, w = note_weights(score)
    else:
        pitches, w = weights_cache
    hist = np.bincount(pitches % 12, weights=w, minlength=12)[:12]
    if not hist.sum() > 0:
        return None
    fr = _frames(score)
    if fr is None:
        return None
    low, prep, fidx, _ = fr
    m = np.zeros((len(EVIDENCE), 24))
    m[0] = hist_corr = key_correlations(hist, profile)
    sounding = np.flatnonzero(low >= 0)
    bass = np.bincount(low[sounding] % 12, minlength=12)[:12].astype(np.float64)
    m[1] = key_correlations(bass, profile)
    first, last = int(sounding[0]), int(sounding[-1])
    tail = low[max(first, last - TAIL_FRAMES + 1) : last + 1]
    head = low[first : first + TAIL_FRAMES]
    m[2] = _tonic_indicator(int(tail[tail >= 0].min()) % 12)
    in_tail = fidx > last - TAIL_FRAMES
    m[3] = _triad_fit(np.bincount(prep[in_tail] % 12, minlength=12)[:12].astype(np.float64))
    m[4] = _tonic_indicator(int(head[head >= 0].min()) % 12)
    notated = _grid_share(score) >= GRID_SHARE_NOTATED
    dk = declared_key(score)
    agrees = False
    if dk is not None and notated:
        major_pc = dk.tonic_pc if dk.mode == "major" else (dk.tonic_pc + 3) % 12
        sig_keys = (major_pc, 12 + (major_pc + 9) % 12)
        top4 = set(np.argsort(-hist_corr)[:4].tolist())
        agrees = bool(top4 & set(sig_keys))
        if agrees:
            m[5, list(sig_keys)] = 1.0
    if windows is None:
        windows = windowed_keys(score, 8, profile)
    named = [wk.key for wk in windows if wk.key is not None]
    for k in named:
        m[6, k.tonic_pc + 12 * MODES.index(k.mode)] += 1.0 / len(named)
    return KeyEvidence(matrix=m, notated=notated, declared_agrees=agrees)


def key_from_evidence(ev: KeyEvidence, weights: KeyWeights = DEFAULT_WEIGHTS) -> KeyEstimate:
    """The best key of the weighted evidence (ties: the better histogram correlation)."""
    score = weights.vector() @ ev.matrix
    order = np.lexsort((-ev.matrix[0], -score))
    best, second = int(order[0]), int(order[1])
    return key_at(best, float(ev.matrix[0, best]), float(score[best] - score[second]), KEY_METHOD)


def estimate_key_v2(score: symusic.Score, weights: KeyWeights = DEFAULT_WEIGHTS) -> KeyEstimate | None:
    """The default key of ``score`` (see the module docstring); None without pitched notes.

    ``correlation`` is the histogram's Pearson r for the chosen key, ``confidence`` the margin
    of the weighted score over the runner-up key.
    """
    ev = key_evidence(score)
    return None if ev is None else key_from_evidence(ev, weights)
