"""Where each bar starts in a token sequence: the ``bar_starts`` column of ``tokens``.

With ``Bar`` tokens (REMI and its kin) a bar starts at its ``Bar`` token: the k-th ``Bar`` token
of a sequence starts bar k, miditok's own bar line (a sequence that ends before others' last bar
gets its length for the bars it lacks). Without them (TSD, MIDILike...), a bar starts at the
first token of the first event at or after the bar line's tick, where a
time token (``Bar``, ``Position``, ``TimeShift``, ``Rest``) belongs to the event it leads to.
So a TSD or MIDILike bar starts at the ``TimeShift`` that reaches its first event; an empty
bar starts where the next one does (a segment of empty bars
has no tokens). Bar lines come from the preprocessed score's time signatures (4/4 before the
first one; a time signature starts a bar), up to the piece's last event.

Computed at tokenize time, from the event times the encoder already has: the fast path's
(:attr:`corpus.tokenize.fastpath.FastTokenizer.event_times`, REMI / TSD / MIDILike), or
miditok's own events (``TokSequence.events``, same ids) for single-vocabulary schemes it
encodes.

Three multi-vocabulary schemes get them from their ids alone (so the fast path and miditok, same
ids, give the same starts): CPWord, whose bar lines are tokens whose ``Bar`` sub-vocabulary
(the Position/Bar slot) holds ``Bar_None`` (the k-th starts bar k, as REMI's ``Bar`` tokens);
MuMIDI, the same with its first slot (Pitch/Position/Bar/Program), where miditok writes a
``Bar_None`` for every bar from bar 0 to the last note's (4/4 bars: MuMIDI has no time
signatures); Octuple, whose every token carries its bar number (``Bar_k`` in its ``Bar``
sub-vocabulary): bar k starts at the first token whose bar number is k or more. An Octuple bar
with no note has no token of its own, so it starts where the next token is (the next non-empty
bar's first token, or the sequence's end): its span is empty and a window of only such bars holds
no token (dropped and counted as ``empty_segments``, as for the other schemes). Every sequence of
a piece gets as many bars as the one reaching furthest.

Two single-vocabulary schemes are also read from their ids. Structured has no bar token and no
time signature (miditok switches them off, so its bars are 4/4): a ``TimeShift`` before every
note moves the time by its value from the previous note's onset, so each note's time is the sum
of the shifts up to it (the time the decoder gives it; equal to the onset for every stored row,
since the preset rejects lossy encodings), and a bar starts at the ``TimeShift`` of the first note
at or after its bar line (per sequence; all sequences get the bars up to the piece's last note).
MMM over REMI (the ``mmm`` preset) is one sequence of track blocks (``Track_Start``, ``Program``,
the track's REMI tokens, ``Track_End``), each with its own ``Bar`` tokens; a window of bars must
take those bars from every track (MMM trains on multi-track bar windows), so its row stores one
list per track block, not per sequence: the index of each of the piece's bars in that block (its
k-th ``Bar`` token; the block's ``Track_End`` for bars it has no token for), then the index of the
block's ``Track_End``, so bar k of a block spans ``[l[k], l[k+1])``. The block's header is
``[previous Track_End + 1, l[0])``. ``snapshot create --segment`` builds each window from every
block's header, its bars and its ``Track_End`` (:func:`corpus.snapshot._segments`). MMM over TSD
or MIDILike (no ``Bar`` token) and trained (BPE...) vocabularies get NULL:
``snapshot create --segment`` refuses them with one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TIME_TOKENS = frozenset({"Bar", "Position", "TimeShift", "Rest"})
MULTI_VOC = ("CPWord", "Octuple", "MuMIDI")
UNSUPPORTED = (
    "trained (BPE, Unigram, WordPiece) vocabularies have no bar starts (a merged token can cross a bar line), "
    "nor has MMM over TSD or MIDILike (no Bar token in its track blocks); every other scheme and preset has them"
)


def supported(tok: Any) -> bool:
    """Whether ``tok``'s rows get bar starts: no trained merges (a merged token can cross a bar
    line); MMM only over REMI (its ``Bar`` tokens mark each track block's bars); of the
    multi-vocabulary schemes, CPWord, Octuple and MuMIDI (bar lines readable from their ids)."""
    if tok.is_trained:
        return False
    name = type(tok).__name__
    if tok.is_multi_voc:
        return name in MULTI_VOC
    if name == "MMM":
        return "Bar_None" in tok.vocab
    return True


def from_multi_voc(tok: Any, seqs: list[Any]) -> list[list[int]]:
    """Per CPWord / Octuple / MuMIDI sequence (tokens of sub-ids), the token index where each bar
    starts, read from the ids (see the module's doc)."""
    slot = tok.vocab_types_idx["Bar"]
    cols = [np.array([t[slot] for t in s], dtype=np.int64) for s in seqs]
    if type(tok).__name__ in ("CPWord", "MuMIDI"):
        return from_bar_tokens(cols, tok.vocab[slot]["Bar_None"])
    num = np.full(len(tok.vocab[slot]), -1, dtype=np.int64)  # sub-id -> bar number (-1: special tokens)
    for name, i in tok.vocab[slot].items():
        kind, _, val = name.partition("_")
        if kind == "Bar" and val.isdigit():
            num[i] = int(val)
    per = [num[c] for c in cols]
    n_bars = max((int(p.max()) + 1 for p in per if len(p)), default=0)
    # bar numbers never go down along a sequence; specials (-1) stay before their bar's tokens
    return [
        np.searchsorted(np.maximum.accumulate(p) if len(p) else p, np.arange(n_bars), side="left")
        .astype(np.int64)
        .tolist()
        for p in per
    ]


def bar_ticks(score: Any, last_tick: int) -> np.ndarray:
    """Ticks of the bar lines of ``score`` (symusic, any tick resolution) up to ``last_tick``."""
    tpq = int(score.ticks_per_quarter)
    sigs: dict[int, tuple[int, int]] = {}
    for ts in score.time_signatures:
        sigs[int(ts.time)] = (int(ts.numerator), int(ts.denominator))  # the last one at a tick wins
    if 0 not in sigs:
        sigs[0] = (4, 4)
    times = sorted(sigs)
    out: list[np.ndarray] = []
    for i, t0 in enumerate(times):
        end = times[i + 1] if i + 1 < len(times) else last_tick + 1
        num, den = sigs[t0]
        length = max(1, tpq * 4 * num // max(1, den))
        out.append(np.arange(t0, max(t0, end), length, dtype=np.int64))
    ticks = np.concatenate(out) if out else np.zeros(0, np.int64)
    return ticks[ticks <= last_tick]


def from_events(
    times: np.ndarray, stream: np.ndarray, token_start: np.ndarray, lengths: list[int], bars: np.ndarray
) -> list[list[int]]:
    """Per stream, the token index (within the stream) where each bar starts: events sorted by
    (stream, time), ``token_start`` the first token of each event (its leading time tokens
    included) counted over all streams, ``lengths`` the tokens per stream."""
    out: list[list[int]] = []
    first = 0
    for s, n in enumerate(lengths):
        sel = stream == s
        t, at = times[sel], token_start[sel] - first
        idx = np.append(at, n)[np.searchsorted(t, bars, side="left")]
        out.append(idx.astype(np.int64).tolist())
        first += n
    return out


def from_tokseqs(seqs: list[Any], bars_of: Any) -> list[list[int]]:
    """Per miditok TokSequence, the token index where each bar starts: each token's time is its
    event's, a time token taking the time of the next other event. ``bars_of(last_tick)`` gives
    the bar ticks."""
    per: list[np.ndarray] = []
    last = 0
    for seq in seqs:
        ev = seq.events
        t = np.array([e.time for e in ev], dtype=np.int64)
        is_time = np.array([e.type_ in TIME_TOKENS for e in ev], dtype=bool)
        # a time token takes the time of the next non-time event (none after it: the end, +inf)
        nxt = np.where(~is_time, np.arange(len(ev)), len(ev))
        nxt = np.minimum.accumulate(nxt[::-1])[::-1] if len(ev) else nxt
        big = np.iinfo(np.int64).max
        eff = np.append(t, big)[nxt]
        per.append(eff)
        if (~is_time).any():
            last = max(last, int(t[~is_time].max()))
    bars = bars_of(last)
    out = []
    for eff in per:
        # effective times are non-decreasing in miditok's order; the first token at or after each bar
        k = np.searchsorted(np.maximum.accumulate(eff) if len(eff) else eff, bars, side="left")
        out.append(k.astype(np.int64).tolist())
    return out


def from_bar_tokens(seqs: list[Any], bar_id: int) -> list[list[int]]:
    """Per sequence, the index of each ``Bar`` token; every sequence padded to the most bars of
    any with its length (the bars it has no token for start at its end)."""
    per = [np.flatnonzero(np.asarray(s, dtype=np.int64) == bar_id) for s in seqs]
    n_bars = max((len(p) for p in per), default=0)
    return [
        np.concatenate([p, np.full(n_bars - len(p), len(s), dtype=np.int64)]).tolist()
        for p, s in zip(per, seqs, strict=True)
    ]


def from_structured(tok: Any, seqs: list[Any]) -> list[list[int]]:
    """Per Structured sequence (ids), the token index where each bar starts: each note's time is
    the sum of the ``TimeShift`` values up to its own (from 0 per sequence, as miditok decodes),
    and bar k starts at the ``TimeShift`` of the first note at or after ``k`` 4/4 bars (Structured
    has no time signature); a bar past a sequence's last note starts at its end. Every sequence
    gets the bars up to the piece's last note (the latest of all sequences)."""
    tpq = int(tok.time_division)
    ticks = tok._tpb_tokens_to_ticks[tpq]  # noqa: SLF001 - miditok's own value -> ticks table, as its decoder
    shift = np.full(len(tok.vocab), -1, dtype=np.int64)  # id -> ticks (-1: not a TimeShift)
    for name, i in tok.vocab.items():
        kind, _, val = name.partition("_")
        if kind == "TimeShift":
            shift[i] = 0 if val == "0.0.1" else ticks[val]
    per: list[tuple[np.ndarray, np.ndarray]] = []
    last = -1
    for s in seqs:
        sh = shift[np.asarray(s, dtype=np.int64)] if len(s) else np.zeros(0, np.int64)
        at = np.flatnonzero(sh >= 0)  # each note's TimeShift token
        times = np.cumsum(sh[at])
        per.append((at, times))
        if len(times):
            last = max(last, int(times[-1]))
    bars = np.arange(0, last + 1, 4 * tpq, dtype=np.int64) if last >= 0 else np.zeros(0, np.int64)
    return [
        np.append(at, len(s))[np.searchsorted(times, bars, side="left")].astype(np.int64).tolist()
        for (at, times), s in zip(per, seqs, strict=True)
    ]


def from_mmm(tok: Any, ids: Any) -> list[list[int]]:
    """For an MMM (over REMI) sequence, one list per track block (``Track_Start`` ... ``Track_End``):
    the index in the sequence of each of the piece's bars in that block (its k-th ``Bar`` token; the
    block's ``Track_End`` for the bars it has none for), then the index of its ``Track_End``. Bar k of
    a block spans ``[l[k], l[k+1])``; its header (``Track_Start``, ``Program``) is
    ``[previous Track_End + 1, l[0])`` (see the module's doc)."""
    a = np.asarray(ids, dtype=np.int64)
    ends = np.flatnonzero(a == tok.vocab["Track_End"])
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    bar_at = np.flatnonzero(a == tok.vocab["Bar_None"])
    per = [bar_at[(bar_at >= s) & (bar_at < e)] for s, e in zip(starts, ends, strict=True)]
    n_bars = max((len(p) for p in per), default=0)
    return [
        np.concatenate([p, np.full(n_bars - len(p) + 1, e, dtype=np.int64)]).tolist()
        for p, e in zip(per, ends, strict=True)
    ]
