"""Texture: how many notes sound at once, per track and per piece (drums excluded).

Measures (``track_texture``), all on one track's notes:

* ``max_polyphony``: most notes sounding at one tick (a note sounds on ``[time, time + duration)``,
  so a note that starts where another ends does not overlap it; a zero-length note counts as one
  tick long).
* ``max_polyphony_legato``: the same after cutting every note's end by the legato tolerance
  (never below one tick), so a release tail that overlaps the next note by up to the tolerance
  does not count. Tolerance: ``LEGATO_QUARTERS`` = 1/8 quarter (a 32nd note; 62 ms at 120 bpm),
  ``round(tpq / 8)`` ticks. Sequenced and played monophonic lines in the test data overlap by up
  to about that; a sixteenth (1/16 quarter) left several real melodies overlapping.
* ``max_onset_polyphony``: most notes starting on the same tick.
* ``share_poly``: share of the (legato-cut) sounding time with more than one note sounding.

Deciding (``is_monophonic``) is one named, versioned rule, ``TEXTURE_RULE``; the measures are
kept so a different threshold can be applied later without recomputing. mono-v1 allows rare
two-note overlaps (a held note under a pickup, one double stop: at most 2 % of the sounding
time) and no three-note stacks; a second voice or chords exceed 2 % quickly.

Piece level (``piece_texture``): ``empty`` (no notes), ``drums_only``, else the same measures and
rule over all pitched notes merged: several monophonic tracks that never sound together make a
``monophonic`` piece, two that do make it ``polyphonic``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

import numpy as np

if TYPE_CHECKING:
    import symusic

TEXTURE_RULE: Final = "mono-v1: max_polyphony_legato <= 2 and share_poly <= 0.02 (legato 1/8 q)"
LEGATO_QUARTERS: Final = 1 / 8
MAX_SHARE_POLY: Final = 0.02
MAX_POLYPHONY_LEGATO: Final = 2

PieceTexture = Literal["monophonic", "polyphonic", "empty", "drums_only"]


def retrigger_ends(time: np.ndarray, duration: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """End ticks with a re-struck pitch ended by the first note-off after its note-on.

    When a pitch is struck again before its note-off, symusic pairs note-ons and note-offs first
    in, first out, which can stretch the last of a run of repeated notes over minutes. music21
    (and most synthesizers) end a note at the first note-off of its pitch after it starts; this
    gives those ends for the notes of one track (one channel). Zero-length notes stay so.
    """
    t = np.asarray(time, dtype=np.int64)
    d = np.asarray(duration, dtype=np.int64)
    end = t + d
    if len(t) < 2:
        return end
    p = np.asarray(pitch)
    # quick exit when no pitch is re-struck while sounding (the usual case): order by pitch
    # (stable radix sort for 8-bit pitches) keeps time order within a pitch
    if np.all(t[1:] >= t[:-1]):
        by_pitch = np.argsort(p, kind="stable")
        tp, ep, pp = t[by_pitch], end[by_pitch], p[by_pitch]
        if not np.any((pp[1:] == pp[:-1]) & (tp[1:] < ep[:-1])):
            return end
    p = p.astype(np.int64)
    span = int(max(end.max(), t.max())) + 1
    offs = np.sort(p * span + end)
    k = np.searchsorted(offs, p * span + t, side="right")
    first = offs[np.minimum(k, len(offs) - 1)] - p * span
    return np.where((d > 0) & (first < end) & (first > t), first, end)


def _sweep(start: np.ndarray, end: np.ndarray) -> tuple[int, float]:
    """(max notes sounding at once, share of sounding time with >= 2 notes) for [start, end)."""
    # one int64 sort: tick * 2, +1 for a start, so at equal ticks ends sort before starts and
    # notes that touch do not overlap
    ev = np.sort(np.concatenate([start * 2 + 1, end * 2]))
    t = ev >> 1
    level = np.cumsum((ev & 1) * 2 - 1)
    seg = np.diff(t)
    lv = level[:-1]
    sounding = int(seg[lv >= 1].sum())
    poly = int(seg[lv >= 2].sum())
    return int(level.max()), (poly / sounding if sounding else 0.0)


def legato_ticks(tpq: int) -> int:
    """The legato tolerance in ticks for a score with ``tpq`` ticks per quarter."""
    return max(1, round(tpq * LEGATO_QUARTERS))


def track_texture(notes: dict[str, np.ndarray], tpq: int) -> dict:
    """Texture measures of one track's notes (``Track.notes.numpy()``) and the mono-v1 verdict.

    ``notes`` needs ``time`` and ``duration``; with ``pitch`` too, re-struck notes are ended at
    the first note-off after them (see :func:`retrigger_ends`).
    """
    if isinstance(tpq, bool) or not isinstance(tpq, (int, np.integer)) or tpq <= 0:
        raise ValueError(f"tpq must be a positive integer, got {tpq!r}")
    start = np.asarray(notes["time"], dtype=np.int64)
    if "pitch" in notes:
        end = retrigger_ends(start, notes["duration"], notes["pitch"])
    else:
        end = start + np.asarray(notes["duration"], dtype=np.int64)
    return _measures(start, end, int(tpq))


def _measures(start: np.ndarray, end: np.ndarray, tpq: int) -> dict:
    n = len(start)
    if n == 0:
        return {
            "n_notes": 0,
            "max_polyphony": 0,
            "max_polyphony_legato": 0,
            "max_onset_polyphony": 0,
            "share_poly": 0.0,
            "is_monophonic": False,
        }
    end = np.maximum(end, start + 1)  # a zero-length note sounds for one tick
    max_poly, _ = _sweep(start, end)
    cut = np.maximum(start + 1, end - legato_ticks(tpq))
    max_legato, share = _sweep(start, cut)
    srt = np.sort(start)
    run_starts = np.flatnonzero(np.r_[True, srt[1:] != srt[:-1], True])
    return {
        "n_notes": n,
        "max_polyphony": max_poly,
        "max_polyphony_legato": max_legato,
        "max_onset_polyphony": int(np.diff(run_starts).max()),
        "share_poly": share,
        "is_monophonic": is_monophonic(max_legato, share),
    }


def is_monophonic(max_polyphony_legato: int, share_poly: float) -> bool:
    """mono-v1 (see ``TEXTURE_RULE``)."""
    return max_polyphony_legato <= MAX_POLYPHONY_LEGATO and share_poly <= MAX_SHARE_POLY


def piece_texture(score: symusic.Score) -> tuple[dict, list[dict]]:
    """(piece dict, one dict per track in ``score.tracks`` order).

    Drum tracks get ``texture='drums'`` and no measures; pitched tracks ``monophonic``,
    ``polyphonic`` or ``empty``. The piece dict holds the measures over all pitched notes
    merged, its ``texture``, and the rule that decided it.
    """
    tpq = score.tpq
    tracks: list[dict] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    n_drum_notes = 0
    for i, track in enumerate(score.tracks):
        if track.is_drum:
            n = len(track.notes)
            n_drum_notes += n
            tracks.append(
                {
                    "index": i,
                    "is_drum": True,
                    "program": track.program,
                    "n_notes": n,
                    "texture": "drums",
                }
            )
            continue
        arr = track.notes.numpy()
        start = arr["time"].astype(np.int64)
        end = retrigger_ends(start, arr["duration"], arr["pitch"])
        tex = _measures(start, end, tpq)
        if tex["n_notes"]:
            starts.append(start)
            ends.append(end)
            texture = "monophonic" if tex["is_monophonic"] else "polyphonic"
        else:
            texture = "empty"
        tracks.append({"index": i, "is_drum": False, "program": track.program, "texture": texture, **tex})
    piece_texture_: PieceTexture
    if starts:
        piece = _measures(np.concatenate(starts), np.concatenate(ends), tpq)
        piece_texture_ = "monophonic" if piece["is_monophonic"] else "polyphonic"
    else:
        piece = _measures(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), tpq)
        piece_texture_ = "drums_only" if n_drum_notes else "empty"
    piece.update(
        texture=piece_texture_,
        rule=TEXTURE_RULE,
        n_drum_notes=n_drum_notes,
        n_pitched_tracks=len(starts),
        n_monophonic_tracks=sum(1 for t in tracks if t["texture"] == "monophonic"),
    )
    return piece, tracks


def melody_tracks(score: symusic.Score) -> list[int]:
    """Indices of the pitched tracks that are monophonic by ``TEXTURE_RULE``."""
    tpq = score.tpq
    return [
        i
        for i, track in enumerate(score.tracks)
        if not track.is_drum and len(track.notes) and track_texture(track.notes.numpy(), tpq)["is_monophonic"]
    ]
