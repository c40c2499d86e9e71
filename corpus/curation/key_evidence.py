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
* ``sections``: the share of 8-bar windows whose own (histogram) key is this key;
  ``sections_top``: 1 for the key(s) covering the most windows;
* ``hist_temperley`` / ``hist_bellman`` / ``hist_albrecht``: the histogram's correlation with the
  Temperley-Kostka-Payne, Bellman-Budge and Albrecht-Shanahan profiles; ``hist_bassw``: with
  Aarden-Essen, of the histogram plus the bass histogram (each as shares);
* ``chord_tonic`` / ``chord_phrase`` / ``chord_diatonic`` / ``cadence``: from the chord labels
  (``chords-v1``, :func:`chord_evidence`): the key's tonic chord over the piece and at phrase
  boundaries, its primary chords (I IV V vi / i iv v V VI), and the V -> I moves landing on it.

The key is the argmax of the weighted sum (:data:`DEFAULT_WEIGHTS`, chosen on the tuning halves of
the labelled sets in :mod:`corpus.curation.key_labels` by cross-validation, see
:func:`~corpus.curation.key_labels.select_weights`; held-out halves are reported apart by
``midicorpus bench``). ``evidence-v3`` (this rule) keeps one weight shared by the three tonic cues
(``final_bass``, ``final_chord``, ``first_bass``) and one on ``chord_diatonic``: a pop song that
ends (or starts) on vi still spends most of its time on I IV V vi of its key, of which the
relative minor's primary chords (i iv v V VI) hold only vi and IV. The other rows are measured
(the bench compares them as families) but weigh nothing. ``evidence-v2`` was the tonic cues alone; ``evidence-v1``'s six separately
fitted weights cross-validated worse (see the README, "Key accuracy against human labels").
``confidence`` is the margin of the best score over the runner-up, in the units of a correlation
(the histogram weight is 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

import numpy as np

from corpus.curation.key import (
    MODES,
    KeyEstimate,
    Profile,
    WindowKey,
    bar_starts,
    declared_key,
    key_at,
    key_correlations,
    note_weights,
    windowed_keys,
)

if TYPE_CHECKING:
    import symusic

    from corpus.curation.chords import Segment

KEY_METHOD: Final = "evidence-v3"  # stored in piece_analysis.key_profile for the default estimate
EVIDENCE: Final = (
    "hist",
    "bass",
    "final_bass",
    "final_chord",
    "first_bass",
    "declared",
    "sections",
    "sections_top",
    "hist_temperley",
    "hist_bellman",
    "hist_albrecht",
    "hist_bassw",
    "chord_tonic",
    "chord_phrase",
    "chord_diatonic",
    "cadence",
)
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
    sections_top: float = 0.0
    hist_temperley: float = 0.0
    hist_bellman: float = 0.0
    hist_albrecht: float = 0.0
    hist_bassw: float = 0.0
    chord_tonic: float = 0.0
    chord_phrase: float = 0.0
    chord_diatonic: float = 0.0
    cadence: float = 0.0

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)


# key_labels.select_weights on the tuning halves (even ids) of every labelled set: the family
# ``tonic+chord_diatonic`` (one weight shared by the tonic cues, one on the primary-chord share;
# fewest free parameters within one standard error of the best cross-validated family), fitted on
# all tuning halves. evidence-v2 was the ``tonic`` family alone (chord_diatonic=0).
DEFAULT_WEIGHTS: Final = KeyWeights(final_bass=0.1, final_chord=0.1, first_bass=0.1, chord_diatonic=0.4)


@dataclass(frozen=True, slots=True)
class KeyEvidence:
    """The 24-key evidence matrix (rows in :data:`EVIDENCE` order; key index pc, 12 + pc minor)."""

    matrix: np.ndarray  # (len(EVIDENCE), 24)
    notated: bool  # onsets on the grid: the declared signature may count
    declared_agrees: bool  # the signature's keys are among the histogram's best four


# Albrecht, J. & Shanahan, D. (2013), "The use of large corpora to train a new type of
# key-finding algorithm", Music Perception 31(1), 59-67: pitch-class distributions of 490
# common-practice pieces (tonic first). Not in music21, so kept here rather than in key.PROFILES
# (whose entries are checked against music21's classes).
ALBRECHT_SHANAHAN: Final = (
    (0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081),
    (0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052),
)
PHRASE_BARS: Final = 4  # chord evidence at phrase boundaries: every 4th bar line
MAJOR_TONIC: Final = frozenset({"maj", "maj7"})  # the tonic chord of a major key
MINOR_TONIC: Final = frozenset({"min", "min7"})  # the tonic chord of a minor key
DOMINANT: Final = frozenset({"maj", "7", "sus4"})  # a chord that can be V (V -> I cadence)
# The primary chords of a key reading, (interval above the tonic, qualities): I IV V vi in
# major; i iv v V VI in minor (the harmonic-minor dominant beside the natural one).
DIATONIC: Final = (
    ((0, MAJOR_TONIC), (5, MAJOR_TONIC), (7, frozenset({"maj", "7"})), (9, MINOR_TONIC)),
    ((0, MINOR_TONIC), (5, MINOR_TONIC), (7, MINOR_TONIC), (7, frozenset({"maj", "7"})), (8, MAJOR_TONIC)),
)


def profile_correlations(hist: np.ndarray, major: tuple[float, ...], minor: tuple[float, ...]) -> np.ndarray:
    """Pearson r of ``hist`` with the 24 rotations of a (major, minor) profile (key index as above)."""
    h = np.asarray(hist, dtype=np.float64)
    hc = h - h.mean()
    out = np.zeros(24)
    if not float((hc**2).sum()) > 0:
        return out
    idx = (np.arange(12)[None, :] - np.arange(12)[:, None]) % 12
    for m, prof in enumerate((major, minor)):
        rot = np.asarray(prof, dtype=np.float64)[idx]
        rc = rot - rot.mean(axis=1, keepdims=True)
        out[12 * m : 12 * m + 12] = (rc @ hc) / (np.sqrt((rc**2).sum(axis=1)) * np.sqrt((hc**2).sum()))
    return out


def _chord_keys(roots: np.ndarray, qualities: Sequence[str]) -> np.ndarray:
    """(chords, 24) booleans: the chord is the key's tonic chord (right quality), in key-index order."""
    maj = np.array([q in MAJOR_TONIC for q in qualities])
    mnr = np.array([q in MINOR_TONIC for q in qualities])
    out = np.zeros((len(roots), 24), dtype=bool)
    rows = np.arange(len(roots))
    out[rows[maj], roots[maj]] = True
    out[rows[mnr], 12 + roots[mnr]] = True
    return out


def _diatonic_keys(roots: np.ndarray, qualities: Sequence[str]) -> np.ndarray:
    """(chords, 24) booleans: the chord is one of the key's primary chords (:data:`DIATONIC`)."""
    out = np.zeros((len(roots), 24), dtype=bool)
    for m, prim in enumerate(DIATONIC):
        for interval, quals in prim:
            ok = np.array([q in quals for q in qualities])
            out[np.flatnonzero(ok), 12 * m + (roots[ok] - interval) % 12] = True
    return out


def chord_evidence(segs: Sequence[Segment], phrase_ticks: np.ndarray | None = None) -> np.ndarray:
    """Four 24-vectors from the chord labels of :mod:`corpus.curation.chords` (``N`` left out).

    * ``chord_tonic``: share of the labelled beats on the key's tonic chord (right quality);
    * ``chord_phrase``: the same share among the chords sounding at, and just before, each tick of
      ``phrase_ticks`` (every ``PHRASE_BARS``-th bar line: phrase starts and ends);
    * ``chord_diatonic``: share of the labelled beats on the key's primary chords (:data:`DIATONIC`);
    * ``cadence``: share of the V -> I moves (a :data:`DOMINANT` chord whose root is a fifth above
      the next chord's, that chord a major or minor tonic chord) that land on the key's tonic
      (I -> IV falls a fifth too, so it counts for the key of IV: the row is noisy in pop).
    A key and its relative share their notes but not their tonic chord, primary chords or cadences.
    """
    out = np.zeros((4, 24))
    chords = [s for s in segs if s.root_pc is not None]
    if not chords:
        return out
    roots = np.array([s.root_pc for s in chords], dtype=np.int64)
    quals = [s.quality for s in chords]
    beats = np.array([s.n_beats for s in chords], dtype=np.float64)
    tonic = _chord_keys(roots, quals)
    out[0] = beats @ tonic / beats.sum()
    out[2] = beats @ _diatonic_keys(roots, quals) / beats.sum()
    if phrase_ticks is not None and len(phrase_ticks):
        starts = np.array([s.start for s in chords], dtype=np.float64)
        ends = np.array([s.end for s in chords], dtype=np.float64)
        t = np.asarray(phrase_ticks, dtype=np.float64)
        at = np.concatenate([t, t - 1])
        i = np.searchsorted(starts, at, "right") - 1
        i = i[(i >= 0) & (at < ends[np.maximum(i, 0)])]
        if len(i):
            out[1] = tonic[i].mean(axis=0)
    dom = np.array([q in DOMINANT for q in quals])
    cad = dom[:-1] & ((roots[:-1] - roots[1:]) % 12 == 7)
    lands = tonic[1:][cad]
    if lands.any():
        out[3] = lands.sum(axis=0) / lands.sum()
    return out


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
    chord_segments: Sequence[Segment] | None = None,
) -> KeyEvidence | None:
    """The evidence matrix of ``score``; None when it has no pitched note of non-zero length.

    ``weights_cache``: ``(pitches, weights)`` from :func:`corpus.curation.key.note_weights`, and
    ``windows`` from :func:`corpus.curation.key.windowed_keys`, and ``chord_segments`` from
    :func:`corpus.curation.chords.score_segments` (its segments), when the caller has them already.
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
    if named:
        m[7] = (m[6] >= m[6].max() - 1e-12).astype(np.float64)
    m[8] = key_correlations(hist, "temperley")
    m[9] = key_correlations(hist, "bellman")
    m[10] = profile_correlations(hist, *ALBRECHT_SHANAHAN)
    bass_share = bass / bass.sum() if bass.sum() > 0 else bass
    m[11] = key_correlations(hist / hist.sum() + bass_share, profile)
    if chord_segments is None:
        from corpus.curation.chords import score_segments

        chord_segments = score_segments(score)[0]
    m[12:16] = chord_evidence(chord_segments, bar_starts(score)[::PHRASE_BARS])
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
