"""Song identity: per-track signatures, verified track matches, and song groups (rule ``song-v1``).

A ``dedup_cluster`` holds copies of one piece; a ``song_group`` holds everything that is the same
composition. Arrangements of a song share little as whole pieces (the skyline of the whole
piece takes the accompaniment where it lies above the melody), but they share a *track*: the
melody, note for note or nearly. So the evidence is per track.

Measure (``track_signatures``, once per piece, in the workers):
  for every pitched track with notes, its own skyline (top note of each chord, onsets within
  1/12 quarter one chord) read as a melody, and from it
  * ``ngrams``: the sorted distinct interval 4-grams (five notes) with repeated pitches merged
    first, as exact codes: transposition-invariant, blind to tempo and resolution, and robust to
    a held note written as two; the evidence a match is verified with;
  * ``vector``: that set hashed into TRACK_DIM signed buckets, for retrieval (its inner products
    estimate the cosine of two sets);
  * ``skyline_share`` (how often the track is the top voice of the piece), ``pitch_mean``,
    ``n_onsets``: what a track does, kept for users and later rules (song-v1 does not use them:
    the melody of Fur Elise is the top voice of only 30% of its chords).
  A track with fewer than MIN_TRACK_NGRAMS distinct n-grams (drums never get here; very short,
  one-riff or one-note tracks do) carries no identity: no vector.

Match (``song_pairs``, per new track, in the driver): the CANDIDATE_K nearest tracks of other
pieces in a faiss index of every identity track, with cosine >= CANDIDATE_FLOOR, are verified
exactly: ``shared`` distinct n-grams and ``containment`` = shared / the smaller track's distinct
n-grams. The best track pair of each piece pair is stored with all three numbers.

Decide (``song_groups``, rule ``song-v1``): two pieces are one song when a stored pair has at
least MIN_SHARED (16) shared n-grams and ``containment >= threshold`` (default 0.65), or at
least STRONG_SHARED (96) at containment 0.4 (a long melody edited throughout); dedup clusters,
shared MSD ids, shared Mutopia ids, an LPD piece and its Lakh file, and an extracted melody and
its parent are joined as well. Changing the threshold re-decides from the stored pairs, without
analysing a piece again.

Why these numbers (measured over the tracks of the 839 readable files of ``../shared/data`` and
``../shared/arrangements``, every track pair with cosine >= 0.3; interval 5-grams without the
merge of repeated pitches, and 3-grams, were measured too and separate worse): most arrangements
of a POP909 song share their melody track exactly (containment 1.0); re-done melodies score
0.67-0.73 (songs 032, 041) or share 257-280 n-grams at 0.58-0.63 (song 099); two editions of Fur
Elise 0.90, Bach in Lakh and Mutopia files 0.91-1.0. Different compositions: at most 0.56 with
16+ shared n-grams (a folk tune against Goldberg variation 27), at most 64 shared n-grams at any
containment (the FFX ending theme, which quotes "To Zanarkand", at 0.51), the Goldberg variations
(one bass line) at most 52 at 0.32, the Nottingham folk tunes (stock openings and cadences)
below that. A high cosine alone is no evidence: a repeated arpeggio or bass riff has few
distinct n-grams and matches every song over the same figure (pop songs over one riff reach a
cosine of 0.74 with 10-26 shared n-grams), hence the exact verification. POP909 itself holds two
songs twice (017 = 018, and 101 = 103 a fifth higher): the rule joins them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from corpus.curation import dedup

if TYPE_CHECKING:
    import symusic

TRACK_SCHEME: Final = "track-ngrams-v1"
SONG_RULE: Final = "song-v1"
NGRAM: Final = 4  # intervals per n-gram (five notes), repeated pitches merged
TRACK_DIM: Final = 256  # retrieval only (verification is exact): half the piece vector's size
MIN_TRACK_NGRAMS: Final = 16  # distinct n-grams for a track to carry identity
CANDIDATE_K: Final = 16  # nearest tracks asked per track
MATCH_MEMORY_LIMIT: Final = os.environ.get("MIDICORPUS_MATCH_MEMORY", "1GB")  # DuckDB's, verifying candidates
ONE_THREAD_CANDIDATES = 200_000  # fewer candidates than this are matched on one DuckDB thread
CANDIDATE_FLOOR: Final = 0.3  # cosine below which a candidate is not verified nor stored
DEFAULT_THRESHOLD: Final = 0.65  # containment
MIN_SHARED: Final = 16  # distinct shared n-grams
STRONG_SHARED: Final = 96  # ... or this many shared n-grams (long melodies edited throughout) ...
STRONG_CONTAINMENT: Final = 0.4  # ... at this containment at least (schemas/views.sql repeats both)
TRACK_CONFIG: Final[dict[str, object]] = {
    "scheme": TRACK_SCHEME,
    "dim": TRACK_DIM,
    "ngram": NGRAM,
    "interval_clip": dedup.INTERVAL_CLIP,
    "min_track_ngrams": MIN_TRACK_NGRAMS,
    "candidate_k": CANDIDATE_K,
    "candidate_floor": CANDIDATE_FLOOR,
}
TRACK_CONFIG_SHA256: Final = hashlib.sha256(json.dumps(TRACK_CONFIG, sort_keys=True).encode()).hexdigest()

# how each join of song-v1 is named in ``song_groups.joined_by`` (strongest first)
JOIN_KINDS: Final = ("msd", "mutopia", "lineage", "lmd_md5", "dedup", "melody")


# ============================================================================================
# measure
# ============================================================================================
def _track_tables(score: symusic.Score) -> list[tuple[int, np.ndarray]]:
    """(track index, note table) of every pitched track with notes, in dedup's grid units."""
    tpq = int(score.tpq)
    out = []
    for i, track in enumerate(score.tracks):
        if track.is_drum or len(track.notes) == 0:
            continue
        a = track.notes.numpy()
        part = np.empty((len(a["time"]), 4), np.int64)
        part[:, 0] = 0
        part[:, 1] = dedup._grid(a["time"], tpq)
        part[:, 2] = dedup._grid(a["duration"], tpq)
        part[:, 3] = a["pitch"]
        out.append((i, part))
    return out


def _skyline_shares(tables: Sequence[tuple[int, np.ndarray]]) -> dict[int, float]:
    """Per track, the share of the piece's chords (onsets within ONSET_MERGE) whose top note it plays."""
    if not tables:
        return {}
    notes = np.concatenate([t for _, t in tables])
    owner = np.concatenate([np.full(len(t), i) for i, t in tables])
    order = np.lexsort((-notes[:, 3], notes[:, 1]))
    onset = notes[order, 1]
    new = np.ones(len(onset), bool)
    new[1:] = np.diff(onset) >= dedup.ONSET_MERGE
    group = np.cumsum(new) - 1
    # the top note of each chord: highest pitch within the group (ties: the first track)
    pitch = notes[order, 3]
    top = np.lexsort((owner[order], -pitch, group))
    first = np.ones(len(top), bool)
    first[1:] = group[top][1:] != group[top][:-1]
    winners = owner[order][top][first]
    n_chords = int(group[-1]) + 1
    counts = {i: 0 for i, _ in tables}
    for i, c in zip(*np.unique(winners, return_counts=True), strict=True):
        counts[int(i)] = int(c)
    return {i: c / n_chords for i, c in counts.items()}


_SALT: Final = np.uint64(0xA0761D6478BD642F)


def track_ngrams(table: np.ndarray) -> np.ndarray:
    """Sorted distinct codes of the interval NGRAM-grams of a track's skyline, repeated pitches merged.

    Merging repeated pitches first (a held note written as two, or two as one) and counting each
    n-gram once makes the set robust to the small edits arrangers and transcribers make; the
    codes are exact (base 49, so 49**4 < 2**31), so two sets intersect without collisions.
    """
    _, pitch = dedup._skyline(table)
    if len(pitch) < 2:
        return np.zeros(0, np.int32)
    step = np.diff(pitch)
    step = np.clip(step[step != 0], -dedup.INTERVAL_CLIP, dedup.INTERVAL_CLIP) + dedup.INTERVAL_CLIP
    if len(step) < NGRAM:
        return np.zeros(0, np.int32)
    return np.unique(dedup._ngram_codes(step, NGRAM, 2 * dedup.INTERVAL_CLIP + 1)).astype(np.int32)


def ngram_vector(codes: np.ndarray) -> np.ndarray:
    """The set ``codes`` hashed into TRACK_DIM signed buckets, unit norm: inner products estimate
    |A & B| / sqrt(|A| |B|), the cosine of the two sets, for retrieval before exact verification."""
    h = dedup._mix(codes.astype(np.uint64) ^ _SALT)
    sign = np.where((h >> np.uint64(63)).astype(bool), -1.0, 1.0)
    v = np.bincount((h % np.uint64(TRACK_DIM)).astype(np.intp), weights=sign, minlength=TRACK_DIM)
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)


def track_signatures(score: symusic.Score, piece_id: str) -> list[dict[str, Any]]:
    """``track_signatures`` rows of one score: one per pitched track with notes (see the module docstring)."""
    tables = _track_tables(score)
    shares = _skyline_shares(tables)
    rows = []
    for i, table in tables:
        grams = track_ngrams(table)
        identity = len(grams) >= MIN_TRACK_NGRAMS
        vec = ngram_vector(grams) if identity else None
        onsets, _ = dedup._skyline(table)
        rows.append(
            {
                "piece_id": piece_id,
                "track_index": i,
                "scheme": TRACK_SCHEME,
                "n_notes": len(table),
                "n_onsets": len(onsets),
                "pitch_mean": float(table[:, 3].mean()),
                "skyline_share": round(shares.get(i, 0.0), 6),
                "n_ngrams": len(grams),
                "has_identity": identity,
                "ngrams": grams.tolist() if identity else None,
                "vector": vec.tolist() if vec is not None else None,
            }
        )
    return rows


# ============================================================================================
# match
# ============================================================================================
def track_key(piece_id: str, track_index: int) -> str:
    return f"{piece_id}:{int(track_index)}"


def split_key(key: str) -> tuple[str, int]:
    pid, _, t = key.rpartition(":")
    return pid, int(t)


def verify(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(shared distinct n-grams, containment) of two sorted n-gram code arrays."""
    if len(a) == 0 or len(b) == 0:
        return 0, 0.0
    shared = int(len(np.intersect1d(a, b, assume_unique=True)))
    return shared, shared / min(len(a), len(b))


@dataclass(frozen=True, slots=True)
class TrackMatch:
    """Evidence that two pieces share a track: the best verified pair of their tracks."""

    piece_a: str
    track_a: int
    piece_b: str
    track_b: int
    cosine: float
    shared: int
    containment: float

    def row(self, run_id: str) -> dict[str, Any]:
        return {
            "piece_a": self.piece_a,
            "track_a": self.track_a,
            "piece_b": self.piece_b,
            "track_b": self.track_b,
            "cosine": round(self.cosine, 6),
            "shared_ngrams": self.shared,
            "containment": round(self.containment, 6),
            "scheme": TRACK_SCHEME,
            "run_id": run_id,
        }


def _better(m: TrackMatch, old: TrackMatch | None) -> bool:
    return old is None or (m.containment, m.shared, m.cosine) > (old.containment, old.shared, old.cosine)


def candidates(
    index: dedup.NearDupIndex, query_keys: Sequence[str], *, k: int = CANDIDATE_K, floor: float = CANDIDATE_FLOOR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate track pairs of ``query_keys``: (query row, other row, cosine) arrays, per query
    its ``k`` nearest tracks of other pieces at cosine >= ``floor``, in query order then rank.
    Vectorized, 32,768 queries at a time: no Python object per candidate."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if not len(query_keys) or len(index) < 2:
        return empty
    import pyarrow.compute as pc

    # a code per piece (equal codes: one piece), in Arrow: no Python string per key (a Lakh-sized
    # lake has 500k tracks)
    piece_code = (
        pc.dictionary_encode(pc.replace_substring_regex(index.ids, pattern=":[^:]*$", replacement=""))
        .indices.to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )
    rows = index.rows_of(query_keys)
    if (rows < 0).any():
        raise KeyError(f"{int((rows < 0).sum())} track keys are not in the index")
    out_q, out_o, out_s = [], [], []
    step = 32_768  # each query chunk reads every saved shard of the index once
    for lo in range(0, len(rows), step):
        chunk = rows[lo : lo + step]
        x = index.vectors_of(chunk)
        scores, hits = index._knn(x, k + 1)
        ok = (hits >= 0) & (scores >= floor)
        ok &= piece_code[np.where(hits >= 0, hits, 0)] != piece_code[chunk][:, None]
        qi, col = np.nonzero(ok)
        out_q.append(chunk[qi])
        out_o.append(hits[qi, col].astype(np.int64))
        out_s.append(scores[qi, col].astype(np.float64))
    return np.concatenate(out_q), np.concatenate(out_o), np.concatenate(out_s)


def match_tracks(
    index: dedup.NearDupIndex,
    query_keys: Sequence[str],
    ngrams_of: Mapping[str, np.ndarray] | Any,
    *,
    k: int = CANDIDATE_K,
    floor: float = CANDIDATE_FLOOR,
) -> list[TrackMatch]:
    """Verified matches of the tracks ``query_keys`` against every track in ``index`` (other pieces).

    ``index`` holds the vectors of every identity track (ids from :func:`track_key`), queries
    included; ``ngrams_of(keys) -> {key: codes}`` (or a mapping) gives the n-gram sets. One match
    per piece pair: the track pair with the highest containment (then shared n-grams, then
    cosine; on a tie, the first candidate). :func:`match_tracks_sql` decides the same in DuckDB.
    """
    q_rows, o_rows, cos = candidates(index, query_keys, k=k, floor=floor)
    if not len(q_rows):
        return []
    keys = index.piece_ids
    cands = [(keys[q], keys[o], s) for q, o, s in zip(q_rows.tolist(), o_rows.tolist(), cos.tolist(), strict=True)]
    need = sorted({c[0] for c in cands} | {c[1] for c in cands})
    grams = ngrams_of(need) if callable(ngrams_of) else {key: ngrams_of[key] for key in need}
    best: dict[tuple[str, str], TrackMatch] = {}
    for q, other, s in cands:
        a, b = (q, other) if q < other else (other, q)
        shared, cont = verify(grams[a], grams[b])
        pa_, ta = split_key(a)
        pb, tb = split_key(b)
        m = TrackMatch(pa_, ta, pb, tb, s, shared, cont)
        if _better(m, best.get((pa_, pb))):
            best[(pa_, pb)] = m
    return [best[key] for key in sorted(best)]


def match_tracks_sql(
    con: Any,
    index: dedup.NearDupIndex,
    query_keys: Sequence[str],
    signatures: str,
    *,
    k: int = CANDIDATE_K,
    floor: float = CANDIDATE_FLOOR,
) -> list[TrackMatch]:
    """:func:`match_tracks`, with the n-gram sets verified in DuckDB (:func:`match_tracks_table`),
    as TrackMatch objects."""
    tbl = match_tracks_table(con, index, query_keys, signatures, k=k, floor=floor)
    return [
        TrackMatch(
            str(r["piece_a"]),
            int(r["track_a"]),
            str(r["piece_b"]),
            int(r["track_b"]),
            float(r["cosine"]),
            int(r["shared_ngrams"]),
            float(r["containment"]),
        )
        for r in tbl.to_pylist()
    ]


MATCH_SCHEMA_COLUMNS: Final = ("piece_a", "track_a", "piece_b", "track_b", "cosine", "shared_ngrams", "containment")


def empty_matches() -> Any:
    """A match table without rows (:func:`match_tracks_table`'s columns)."""
    import pyarrow as pa

    return pa.table(
        {
            "piece_a": pa.array([], pa.string()),
            "track_a": pa.array([], pa.int32()),
            "piece_b": pa.array([], pa.string()),
            "track_b": pa.array([], pa.int32()),
            "cosine": pa.array([], pa.float64()),
            "shared_ngrams": pa.array([], pa.int64()),
            "containment": pa.array([], pa.float64()),
        }
    )


def match_tracks_table(
    con: Any,
    index: dedup.NearDupIndex,
    query_keys: Sequence[str],
    signatures: str,
    *,
    k: int = CANDIDATE_K,
    floor: float = CANDIDATE_FLOOR,
    dictionary: bool = False,
) -> Any:
    """The verified matches of :func:`match_tracks` as one Arrow table (columns piece_a, track_a,
    piece_b, track_b, cosine, shared_ngrams, containment; sorted by piece pair), the n-gram sets
    intersected in DuckDB on ``con`` (``signatures``: a relation with columns piece_id,
    track_index, ngrams). The candidates go in as one Arrow table and neither the n-gram lists nor
    the matches become Python objects, so the driver's memory does not grow with the number of
    candidates (a first curate of 176k pieces has millions).

    ``dictionary``: piece_a and piece_b are dictionary arrays (int32 codes into the sorted piece
    ids of the index), not a string each: a first curate of 176k pieces has millions of matches,
    whose piece ids as strings would take hundreds of MB in the driver."""
    import pyarrow as pa
    import pyarrow.compute as pc

    q_rows, o_rows, cos = candidates(index, query_keys, k=k, floor=floor)
    if not len(q_rows):
        return empty_matches()
    # the candidates go in as row codes (16 bytes each, millions at a first curate), the keys once
    # per track they name (not every indexed track: 370k at 176k for a nightly's few hundred):
    # DuckDB joins them, under its memory limit, where they are needed
    rows = np.unique(np.concatenate([q_rows, o_rows])).astype(np.int64)
    named = index.ids.take(pa.array(rows))
    # each named track's piece as a code into their sorted piece ids: codes order as the ids do
    of_track = pc.replace_substring_regex(named, pattern=":[^:]*$", replacement="")
    pieces = pc.unique(of_track).sort()
    piece_code = pc.index_in(of_track, value_set=pieces).cast(pa.int32())
    keys = pa.table({"row": pa.array(rows.astype(np.int32)), "key": named, "pc": piece_code})
    del of_track, piece_code, rows, named
    cand = pa.table(
        {
            "q": pa.array(q_rows.astype(np.int32)),
            "o": pa.array(o_rows.astype(np.int32)),
            "cosine": pa.array(cos, pa.float64()),
            "ord": pa.array(np.arange(len(q_rows), dtype=np.int64)),
        }
    )
    del q_rows, o_rows, cos
    con.register("track_candidates", cand)
    con.register("track_keys", keys)
    threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    try:
        # the joins and the window over millions of candidates (a first curate) spill past this
        # (into the connection's temp_directory: the lock holder's is its own, see Lake._open_writer)
        con.execute(f"SET memory_limit = '{MATCH_MEMORY_LIMIT}'")
        if cand.num_rows < ONE_THREAD_CANDIDATES:
            # a nightly delta's few candidates: the scan of every track's n-grams dominates, and each
            # thread decodes a whole row group of them at once
            con.execute("SET threads = 1")
        got = con.execute(
            f"""
            WITH k AS (
                SELECT kq.key AS q, ko.key AS o, kq.pc AS qc, ko.pc AS oc, t.cosine, t.ord FROM track_candidates t
                JOIN track_keys kq ON kq.row = t.q JOIN track_keys ko ON ko.row = t.o
            ),
            c AS (
                SELECT least(q, o) AS a, greatest(q, o) AS b, CASE WHEN q <= o THEN qc ELSE oc END AS ac,
                       CASE WHEN q <= o THEN oc ELSE qc END AS bc, cosine, ord FROM k
            ),
            need AS (SELECT a AS key FROM c UNION SELECT b FROM c),
            s AS (
                SELECT piece_id || ':' || track_index AS key, ngrams FROM ({signatures})
                WHERE piece_id IN (SELECT DISTINCT split_part(key, ':', 1) FROM need)
                AND piece_id || ':' || track_index IN (SELECT key FROM need)
            ),
            v AS (
                SELECT c.ac AS pa, CAST(split_part(c.a, ':', 2) AS INTEGER) AS ta,
                       c.bc AS pb, CAST(split_part(c.b, ':', 2) AS INTEGER) AS tb,
                       c.cosine, c.ord, len(list_intersect(sa.ngrams, sb.ngrams)) AS shared,
                       least(len(sa.ngrams), len(sb.ngrams)) AS smaller
                FROM c JOIN s sa ON sa.key = c.a JOIN s sb ON sb.key = c.b
            )
            SELECT pa AS piece_a, ta AS track_a, pb AS piece_b, tb AS track_b, cosine,
                   CAST(shared AS BIGINT) AS shared_ngrams,
                   CAST(CASE WHEN smaller = 0 THEN 0.0 ELSE shared / smaller END AS DOUBLE) AS containment
            FROM v
            QUALIFY row_number() OVER (PARTITION BY pa, pb ORDER BY containment DESC, shared DESC, cosine DESC, ord) = 1
            ORDER BY pa, pb
            """
        ).to_arrow_table()
    finally:
        con.unregister("track_candidates")
        con.unregister("track_keys")
        with contextlib.suppress(Exception):
            con.execute("RESET memory_limit")
            con.execute(f"SET threads = {threads}")
    # piece codes (sorted as the ids are, so the order by piece pair holds) back to piece ids
    for col in ("piece_a", "piece_b"):
        codes = got.column(col).combine_chunks() if got.num_rows else pa.array([], pa.int32())
        ids = pa.DictionaryArray.from_arrays(codes.cast(pa.int32()), pieces)
        got = got.set_column(got.schema.get_field_index(col), col, ids if dictionary else ids.cast(pa.string()))
    if dictionary:
        schema = empty_matches().schema
        for col in ("piece_a", "piece_b"):
            schema = schema.set(schema.get_field_index(col), pa.field(col, pa.dictionary(pa.int32(), pa.string())))
        return got.cast(schema)
    return got.cast(empty_matches().schema)


def match_rows(matches: Any, run_id: str, chunk: int = 65_536) -> Any:
    """The ``song_pairs`` rows of a match table (what :meth:`TrackMatch.row` gives, a chunk at a time)."""
    import pyarrow as pa

    n = matches.num_rows

    def rounded(col: str) -> pa.ChunkedArray:
        values = matches.column(col)
        return pa.chunked_array(
            [
                pa.array([round(x, 6) for x in values.slice(lo, chunk).to_pylist()], pa.float64())
                for lo in range(0, n, chunk)
            ],
            pa.float64(),
        )

    def same(value: str) -> pa.Array:
        if pa.types.is_dictionary(matches.schema.field("piece_a").type):  # a code each, as the pieces
            return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string()))
        return pa.array([value] * n, pa.string())

    return pa.table(
        {
            "piece_a": matches.column("piece_a"),
            "track_a": matches.column("track_a").cast(pa.int32()),
            "piece_b": matches.column("piece_b"),
            "track_b": matches.column("track_b").cast(pa.int32()),
            "cosine": rounded("cosine"),
            "shared_ngrams": matches.column("shared_ngrams").cast(pa.int32()),
            "containment": rounded("containment"),
            "scheme": same(TRACK_SCHEME),
            "run_id": same(run_id),
        }
    )


def plain_matches(matches: Any) -> Any:
    """A match table with piece ids as strings (:func:`match_tracks_table` ``dictionary=True`` decoded)."""
    return matches.cast(empty_matches().schema)


def root_of(parent: Any, x: Any) -> Any:
    """The root of ``x`` in a union-find forest ``parent`` (a list or a dict), compressing the path."""
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def passes(containment: float, shared: int, threshold: float = DEFAULT_THRESHOLD, min_shared: int = MIN_SHARED) -> bool:
    """The ``song-v1`` decision on one stored pair: at least ``min_shared`` shared n-grams, and a
    containment of ``threshold``, or STRONG_SHARED shared n-grams at STRONG_CONTAINMENT."""
    if shared < min_shared:
        return False
    return containment >= threshold or (shared >= STRONG_SHARED and containment >= STRONG_CONTAINMENT)


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"song threshold must be a containment in (0, 1], got {threshold!r}")
    return float(threshold)


# ============================================================================================
# decide
# ============================================================================================
@dataclass(frozen=True, slots=True)
class SongGroups:
    """``group_of`` maps every piece to its song group id; ``joined_by`` says what first joined it."""

    group_of: dict[str, str]
    joined_by: dict[str, str]

    @property
    def n_groups(self) -> int:
        return len(set(self.group_of.values()))


def group_songs(
    piece_ids: Sequence[str],
    links: Iterable[tuple[str, str, str]],
    keys: Mapping[str, Iterable[str]] | None = None,
) -> SongGroups:
    """Union-find over ``links`` ``(piece_a, piece_b, kind)`` and shared external ``keys``.

    ``keys`` maps a piece to external ids (``msd:<id>``, ``mutopia:<id>``): pieces sharing one
    are joined (kind ``msd`` / ``mutopia``). A group is named after its smallest external key
    (MSD ids first: they are stable and name the song), else its smallest piece id: content
    hashes, so the name does not depend on the order pieces arrived in. ``joined_by`` is the
    kind of the strongest link that joined a piece to its group (``self`` for a group of one).
    """
    ids = sorted({str(p) for p in piece_ids})
    at = {p: i for i, p in enumerate(ids)}
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        return root_of(parent, i)

    strength = {kind: n for n, kind in enumerate(JOIN_KINDS)}
    joined: dict[str, str] = {}

    def note(p: str, kind: str) -> None:
        old = joined.get(p)
        if old is None or strength.get(kind, 99) < strength.get(old, 99):
            joined[p] = kind

    for a, b, kind in links:
        if a not in at or b not in at or a == b:
            continue
        ra, rb = find(at[a]), find(at[b])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        note(a, kind)
        note(b, kind)
    first_with: dict[str, str] = {}
    for p, ks in (keys or {}).items():
        if p not in at:
            continue
        for key in ks:
            other = first_with.setdefault(key, p)
            if other != p:
                ra, rb = find(at[p]), find(at[other])
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
                kind = key.split(":", 1)[0]
                note(p, kind)
                note(other, kind)

    def rank(key: str) -> tuple[int, str]:
        kind = key.split(":", 1)[0]
        return ({"msd": 0, "mutopia": 1}.get(kind, 2), key)

    name: dict[int, str] = {}
    for p in ids:
        root = find(at[p])
        cands = [k for k in (keys or {}).get(p, ()) if first_with.get(k) is not None]
        best = min([*cands, f"piece:{p}"], key=rank)
        if root not in name or rank(best) < rank(name[root]):
            name[root] = best
    group_of = {p: _group_id(name[find(at[p])]) for p in ids}
    return SongGroups(group_of=group_of, joined_by={p: joined.get(p, "self") for p in ids})


def _group_id(key: str) -> str:
    """``piece:<sha>`` names a group by its piece id alone; external names keep their kind (``msd:TR...``)."""
    return key[len("piece:") :] if key.startswith("piece:") else key
