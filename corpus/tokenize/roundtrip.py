"""Round-trip check: do a piece's tokens decode back to its notes?

The reference is the score after the tokenizer's own preprocessing (resampling and
quantization to the scheme's resolution), so a lossless scheme matches it exactly. Notes
are compared by pitch, onset and duration in quarters, within ``tol`` quarters (for schemes
whose resolution is finer than their preprocessing, e.g. PerTok's microtiming bins).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_TOL_Q = 1 / 32


def _notes(score: Any) -> np.ndarray:
    rows = []
    for t in score.tracks:
        a = t.notes.numpy()
        if a["pitch"].size:
            rows.append(np.stack([a["pitch"].astype(np.float64), a["time"] / score.tpq, a["duration"] / score.tpq], 1))
    if not rows:
        return np.zeros((0, 3))
    arr = np.concatenate(rows)
    return arr[np.lexsort((arr[:, 2], arr[:, 1], arr[:, 0]))]


def match_rate(ref: Any, dec: Any, tol: float = DEFAULT_TOL_Q) -> float:
    """Share of notes matched one-to-one (pitch equal, onset and duration within ``tol``).

    Per pitch, each reference note (in onset order) takes the unused decoded note within
    ``tol`` of its onset whose duration is within ``tol`` too, the closest one first. Pairing
    by sorted position alone is not enough: two notes of one pitch whose onsets are within
    ``tol`` (two tracks, or a flam that PerTok's microtiming bins snap together) can come back
    in the other order, and position pairing then called both lost (Mr. Blue Sky's drums).
    """
    a, b = _notes(ref), _notes(dec)
    if len(a) == 0 and len(b) == 0:
        return 1.0
    eps = tol + 1e-9
    matched = 0
    for pitch in np.intersect1d(np.unique(a[:, 0]), np.unique(b[:, 0])):
        x, y = a[a[:, 0] == pitch], b[b[:, 0] == pitch]
        used = np.zeros(len(y), dtype=bool)
        lo = 0
        for on, dur in x[:, 1:]:
            while lo < len(y) and y[lo, 1] < on - eps:
                lo += 1
            best, best_cost = -1, np.inf
            j = lo
            while j < len(y) and y[j, 1] <= on + eps:
                if not used[j] and abs(y[j, 2] - dur) <= eps:
                    cost = abs(y[j, 1] - on) + abs(y[j, 2] - dur)
                    if cost < best_cost:
                        best, best_cost = j, cost
                j += 1
            if best >= 0:
                used[best] = True
                matched += 1
    return matched / max(len(a), len(b))


def decode_ids(tok: Any, ids: Any, multi: list[list[int]] | None, lengths: list[int]) -> Any:
    flat: Any = multi if multi is not None else ids
    seqs, i = [], 0
    for n in lengths:
        part = flat[i : i + n]
        seqs.append(part if multi is not None else [int(x) for x in part])
        i += n
    if tok.one_token_stream:
        return tok.decode(seqs[0])
    if type(tok).__name__ == "Octuple" and len(seqs) > 1:
        return _decode_octuple_per_track(tok, seqs)
    return tok.decode(seqs)


def _decode_octuple_per_track(tok: Any, seqs: list[Any]) -> Any:
    """Octuple's decode of one sequence per track, with the time-signature state reset per track.

    miditok 3.1.0's ``Octuple._tokens_to_score`` sets ``bar_at_last_ts_change`` and
    ``tick_at_last_ts_change`` once, before its loop over sequences, so every track after the
    first is placed from the last time-signature change of the track before it: any piece
    with a time-signature change and several tracks decodes with tracks moved by bars (the
    encoding is right; 12 of the 24 shared pieces Octuple was rejecting for). Each track
    here is decoded after the first row of the first track alone, which gives it miditok's
    own starting time signature (that row's) and a fresh bar / tick state; the lone note
    that row decodes to is dropped. Reproduction::

        tok = miditok.Octuple(miditok.TokenizerConfig(use_time_signatures=True))
        s = symusic.Score(480)
        for t, n in [(0, 4), (1920, 3), (3360, 4)]:
            s.time_signatures.append(symusic.TimeSignature(t, n, 4))
        a, b = symusic.Track(program=0), symusic.Track(program=1)
        for t in (0, 1920, 3360):
            a.notes.append(symusic.Note(t, 480, 60, 64))
        b.notes.append(symusic.Note(480, 480, 64, 64))
        s.tracks.extend([a, b])
        dec = tok.decode(tok.encode(s))
        [n.time / dec.tpq for n in dec.tracks[1].notes]  # [0.0], not [1.0]
    """
    out = tok.decode([seqs[0]])
    first = list(seqs[0][:1])
    for seq in seqs[1:]:
        if not first or not len(seq):
            continue
        part = tok.decode([first, seq])
        for track in list(part.tracks)[1:]:
            out.tracks.append(track)
    return out


def reference(tok: Any, score: Any) -> Any:
    """What a lossless encoding decodes to: the score after the tokenizer's preprocessing,
    with durations quantized the way the scheme encodes them.

    PerTok is the exception to "preprocessing quantizes": its ``_adjust_durations`` is a
    no-op and each note's Duration token is the closest of its duration values
    (``_get_closest_duration_tuple``, first of equals) at encode time, so a 0.95-quarter
    note comes back as 1.0 by design. Comparing with the unquantized durations called 126
    of 192 pieces lossy.
    """
    ref = tok.preprocess_score(score.copy())
    if type(tok).__name__ == "PerTok" and tok.durations:
        values = np.array([beat * res + sub for beat, sub, res in tok.durations], dtype=np.int64)
        programs = set(tok.config.use_note_duration_programs)
        for track in ref.tracks:
            if (-1 if track.is_drum else track.program) not in programs or not len(track.notes):
                continue
            soa = track.notes.numpy()
            nearest = np.abs(soa["duration"].astype(np.int64)[:, None] - values[None, :]).argmin(axis=1)
            track.notes = type(track.notes).from_numpy(
                np.ascontiguousarray(soa["time"]),
                np.ascontiguousarray(values[nearest].astype(np.int32)),
                np.ascontiguousarray(soa["pitch"]),
                np.ascontiguousarray(soa["velocity"]),
            )
    return ref


def check(
    tok: Any, score: Any, ids: list[int], multi: list[list[int]] | None, lengths: list[int], tol: float = DEFAULT_TOL_Q
) -> float:
    return match_rate(reference(tok, score), decode_ids(tok, ids, multi, lengths), tol)


def loss_cause(tok: Any, score: Any) -> str:
    """Why a scheme that loses notes by design loses them in this piece ("" when no known cause).

    Structured moves time only by a TimeShift before each note, the closest of its shift
    values: an onset gap longer than the longest shift (12 beats by default: a late entry,
    a long rest) or between two coarse values (4-12 beats go by 1/4 beat, the grid by 1/8)
    moves every later note of the track. Octuple writes a time signature only in note rows,
    so the decoder learns of a change from the track's next note: a track with no note in the
    bar where a time signature starts gets its bars counted with the old length; and miditok
    3.1's decoder places the first note under a new time signature with the old one's
    position unit (off when the denominator changes and the note is not on the bar line).
    """
    name = type(tok).__name__
    pre = tok.preprocess_score(score.copy())
    tpq = pre.ticks_per_quarter
    if name == "Structured":
        values = np.asarray(tok._tpb_to_time_array[tpq], dtype=np.int64)
        longest = int(values.max())
        for index, track in enumerate(pre.tracks):
            onsets = track.notes.numpy()["time"].astype(np.int64)
            gaps = np.diff(onsets, prepend=0)
            gaps = gaps[gaps > 0]
            over = gaps[gaps > longest]
            if len(over):
                return f"track {index}: an onset gap of {over.max() / tpq:g} beats, over the {longest / tpq:g}-beat TimeShift cap"
            off = gaps[~np.isin(gaps, values)]
            if len(off):
                return f"track {index}: an onset gap of {off[0] / tpq:g} beats is no TimeShift value (coarser above 4 beats)"
        return ""
    if name == "Octuple":
        sigs = [(int(t.time), int(t.numerator), int(t.denominator)) for t in pre.time_signatures]
        if not sigs or sigs[0][0] != 0:
            sigs.insert(0, (0, 4, 4))
        changes = [(sigs[i], sigs[i - 1]) for i in range(1, len(sigs)) if sigs[i][1:] != sigs[i - 1][1:]]
        for index, track in enumerate(pre.tracks):
            onsets = track.notes.numpy()["time"].astype(np.int64)
            for (time, num, den), (_, _, old_den) in changes:
                after = onsets[onsets >= time]
                if not len(after):
                    continue
                if after.min() >= time + tpq * 4 // den * num:
                    return f"track {index}: no note in the bar where {num}/{den} starts (quarter {time / tpq:g})"
                if den != old_den and after.min() != time:
                    return (
                        f"track {index}: first note under {num}/{den} (quarter {time / tpq:g}) off the bar line "
                        f"after a /{old_den} (miditok's decoder uses the old position unit)"
                    )
        return ""
    return ""


def lossy_detail(tok: Any, score: Any, rate: float) -> str:
    """The ``lossy_encoding`` reject's detail: the share decoded back, the scheme and the cause."""
    cause = loss_cause(tok, score)
    return f"{rate:.1%} of the notes decode back ({type(tok).__name__})" + (f": {cause}" if cause else "")
