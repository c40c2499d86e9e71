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

Two multi-vocabulary schemes get them from their ids alone (so the fast path and miditok, same
ids, give the same starts): CPWord, whose bar lines are tokens whose ``Bar`` sub-vocabulary
(the Position/Bar slot) holds ``Bar_None`` (the k-th starts bar k, as REMI's ``Bar`` tokens);
Octuple, whose every token carries its bar number (``Bar_k`` in its ``Bar`` sub-vocabulary):
bar k starts at the first token whose bar number is k or more. An Octuple bar with no note has
no token of its own, so it starts where the next token is (the next non-empty bar's first
token, or the sequence's end): its span is empty and a window of only such bars holds no token
(dropped and counted as ``empty_segments``, as for the other schemes). Every sequence of a
piece gets as many bars as the one reaching furthest. Other multi-vocabulary schemes,
Structured, MMM, the other fast paths and trained (BPE...) vocabularies get NULL:
``snapshot create --segment`` refuses them with one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TIME_TOKENS = frozenset({"Bar", "Position", "TimeShift", "Rest"})
MULTI_VOC = ("CPWord", "Octuple")
UNSUPPORTED = (
    "bar starts are stored for untrained REMI, TSD, MIDILike, CPWord and Octuple schemes and their presets "
    "(not Structured, MMM, other multi-vocabulary schemes or trained vocabularies)"
)


def supported(tok: Any) -> bool:
    """Whether ``tok``'s rows get bar starts: no trained merges (a merged token can cross a bar
    line), and a time walk of bars (not Structured's per-note shifts, not MMM's track blocks); of
    the multi-vocabulary schemes, CPWord and Octuple (bar lines readable from their ids)."""
    if tok.is_trained:
        return False
    name = type(tok).__name__
    if tok.is_multi_voc:
        return name in MULTI_VOC
    return name not in ("Structured", "MMM")


def from_multi_voc(tok: Any, seqs: list[Any]) -> list[list[int]]:
    """Per CPWord / Octuple sequence (tokens of sub-ids), the token index where each bar starts,
    read from the ids (see the module's doc)."""
    slot = tok.vocab_types_idx["Bar"]
    cols = [np.array([t[slot] for t in s], dtype=np.int64) for s in seqs]
    if type(tok).__name__ == "CPWord":
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
