"""Duplicates: content hashes, near-duplicate vectors, a faiss index and union-find clusters.

Three levels, each catching what the one before misses (byte sha256 is done at ingest):

* ``content_hash``: the notes alone. Every note becomes ``(is_drum, onset, duration, pitch)``
  with onset and duration in 1/96 quarter (rounded half up, as ``symusic`` rounds when it
  resamples), so ticks per quarter, tempo events, track names, track order, programs, channels,
  velocities and the split into tracks do not count. Notes are one sorted multiset, not grouped
  by track or program: a type 0 and a type 1 save of the same song, or one re-voiced for other
  instruments, are the same notes. ``content_hash_transposed`` also measures pitched notes from
  the lowest pitched note (drums stay as they are), so a copy moved by any interval matches.
  96 is the coarsest common resolution: a file saved again at 96 tpq (or any tpq whose grid holds
  its notes) keeps its hash; other lossy re-saves move notes by a grid step and are left to the
  vectors.
* ``piece_vector``: a fixed-size vector for near-duplicates (re-arranged, edited, re-quantized,
  performed from the same notes). See its docstring for the design and measured scores.
* ``cluster``: union-find over equal content hashes, equal transposed hashes and vector pairs at
  or above ``threshold`` found with :class:`NearDupIndex` (faiss). Each cluster is named after its
  representative: the member with the most notes, then the longest, then the smallest piece id
  (the most complete copy, and deterministic).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

if TYPE_CHECKING:
    import faiss
    import pyarrow as pa
    import symusic

# --- content hash -------------------------------------------------------------------------
HASH_GRID: Final = 96  # onsets and durations in 1/96 quarter
_CONTENT_TAG: Final = b"midicorpus.content.v1\0"
_TRANSPOSED_TAG: Final = b"midicorpus.content-transposed.v1\0"

# --- near-duplicate vector (changing any of these changes VECTOR_SCHEME) -------------------
VECTOR_SCHEME: Final = "skyline-ngrams-v1"
VECTOR_DIM: Final = 512
ONSET_MERGE: Final = 8  # grid steps (1/12 quarter): onsets closer than this are one chord
INTERVAL_CLIP: Final = 24  # melodic intervals beyond two octaves are one symbol
INTERVAL_NGRAM: Final = 5  # five intervals = six melody notes
RHYTHM_NGRAM: Final = 4  # four (interval, duration-contour) pairs
RHYTHM_BAND: Final = 0.3  # |log2(ioi ratio)| below this is "same length" (ratio 0.81..1.23)
RHYTHM_WEIGHT: Final = 0.5  # the rhythm block's share next to the interval block (1.0)
REPEAT_WEIGHT: Final = 0.2  # weight of n-grams that only repeat one pitch (drones, drum-like lines)
MIN_NGRAMS: Final = 16  # fewer interval n-grams (other than one repeated pitch): zero vector, hashes only
VECTOR_CONFIG: Final[dict[str, object]] = {
    "scheme": VECTOR_SCHEME,
    "dim": VECTOR_DIM,
    "hash_grid": HASH_GRID,
    "onset_merge": ONSET_MERGE,
    "interval_clip": INTERVAL_CLIP,
    "interval_ngram": INTERVAL_NGRAM,
    "rhythm_ngram": RHYTHM_NGRAM,
    "rhythm_band": RHYTHM_BAND,
    "rhythm_weight": RHYTHM_WEIGHT,
    "repeat_weight": REPEAT_WEIGHT,
    "min_ngrams": MIN_NGRAMS,
}

# --- index and clustering -------------------------------------------------------------------
DEFAULT_THRESHOLD: Final = 0.7  # copies >= 0.75, Goldberg variations <= 0.24, unrelated <= 0.32 (piece_vector)
PAIR_K: Final = 32  # neighbours asked per piece when collecting pairs
EXACT_MAX_N: Final = 50_000  # up to this many pieces IndexFlatIP (exact), above it IVF
IVF_NPROBE: Final = 16
IVF_TRAIN_PER_LIST: Final = 64  # IVF k-means sample: this many vectors per list (faiss asks 39-256)
BUILD_CHUNK: Final = 32_768  # vectors added to a new index at a time (build_from)
SHARD_N: Final = 32_768  # vectors per file of a saved IVF index (a loaded one reads one file at a time)
IndexKind = Literal["auto", "flat", "ivf"]
PairReason = Literal["content_hash", "transposed_hash", "near_dup"]

_M1: Final = np.uint64(0xFF51AFD7ED558CCD)
_M2: Final = np.uint64(0xC4CEB9FE1A85EC53)
_S33: Final = np.uint64(33)
_SALT_INTERVAL: Final = np.uint64(0x9E3779B97F4A7C15)
_SALT_RHYTHM: Final = np.uint64(0xD1B54A32D192ED03)


# ============================================================================================
# notes
# ============================================================================================
def _grid(ticks: np.ndarray, tpq: int) -> np.ndarray:
    """Ticks to 1/HASH_GRID quarter, rounded half up: what ``Score.resample(96)`` does."""
    t = ticks.astype(np.int64)
    return (2 * t * HASH_GRID + tpq) // (2 * tpq)


def _note_table(score: symusic.Score) -> np.ndarray:
    """All notes as an int64 table with columns is_drum, onset, duration, pitch (grid units)."""
    tpq = int(score.tpq)
    if tpq <= 0:
        raise ValueError(f"score has ticks per quarter {tpq}; a positive value is needed")
    parts = []
    for track in score.tracks:
        if len(track.notes) == 0:
            continue
        a = track.notes.numpy()
        n = len(a["time"])
        part = np.empty((n, 4), np.int64)
        part[:, 0] = 1 if track.is_drum else 0
        part[:, 1] = _grid(a["time"], tpq)
        part[:, 2] = _grid(a["duration"], tpq)
        part[:, 3] = a["pitch"]
        parts.append(part)
    if not parts:
        return np.zeros((0, 4), np.int64)
    return np.concatenate(parts)


def _digest(tag: bytes, table: np.ndarray) -> str:
    """sha256 of the note multiset: rows packed to (onset, is_drum, pitch) and duration, sorted."""
    key = (table[:, 1] * 2 + table[:, 0]) * 128 + table[:, 3]
    packed = np.empty((len(table), 2), "<i8")
    order = np.lexsort((table[:, 2], key))
    packed[:, 0] = key[order]
    packed[:, 1] = table[order, 2]
    return hashlib.sha256(tag + packed.tobytes()).hexdigest()


def _transposed(table: np.ndarray) -> np.ndarray:
    pitched = table[:, 0] == 0
    if not pitched.any():
        return table
    out = table.copy()
    out[pitched, 3] -= out[pitched, 3].min()
    return out


def content_hash(score: symusic.Score) -> str:
    """sha256 (hex) of the notes alone: time in quarters, no tpq, tempo, names or track order."""
    return _digest(_CONTENT_TAG, _note_table(score))


def content_hash_transposed(score: symusic.Score) -> str:
    """:func:`content_hash` with pitched notes relative to the lowest pitched note (drums as is)."""
    return _digest(_TRANSPOSED_TAG, _transposed(_note_table(score)))


EMPTY_CONTENT_HASH: Final = _digest(_CONTENT_TAG, np.zeros((0, 4), np.int64))
EMPTY_TRANSPOSED_HASH: Final = _digest(_TRANSPOSED_TAG, np.zeros((0, 4), np.int64))


# ============================================================================================
# vector
# ============================================================================================
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64/murmur3 finalizer on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


def _skyline(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and top pitches of the pitched notes, onsets closer than ONSET_MERGE being one chord."""
    pitched = table[table[:, 0] == 0]
    if len(pitched) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(pitched[:, 1], kind="stable")
    onset, pitch = pitched[order, 1], pitched[order, 3]
    new = np.ones(len(onset), bool)
    new[1:] = np.diff(onset) >= ONSET_MERGE
    start = np.flatnonzero(new)
    return onset[start], np.maximum.reduceat(pitch, start)


def _ngram_codes(tokens: np.ndarray, n: int, base: int) -> np.ndarray:
    """Exact integer code of every n-gram of small tokens (base**n stays far below 2**63)."""
    m = len(tokens) - n + 1
    code = np.zeros(m, np.int64)
    for k in range(n):
        code = code * base + tokens[k : k + m]
    return code


def _block(codes: np.ndarray, repeat_codes: np.ndarray, salt: np.uint64) -> np.ndarray:
    """Signed feature hashing of n-gram codes: sqrt(count) per distinct n-gram, unit norm."""
    uniq, counts = np.unique(codes, return_counts=True)
    weight = np.sqrt(counts.astype(np.float64))
    at = np.minimum(np.searchsorted(repeat_codes, uniq), len(repeat_codes) - 1)
    weight[repeat_codes[at] == uniq] *= REPEAT_WEIGHT
    h = _mix(uniq.astype(np.uint64) ^ salt)
    weight[(h >> np.uint64(63)).astype(bool)] *= -1.0
    out = np.bincount((h % np.uint64(VECTOR_DIM)).astype(np.intp), weights=weight, minlength=VECTOR_DIM)
    norm = float(np.linalg.norm(out))
    return out / norm if norm > 0 else out


_BASE_I: Final = 2 * INTERVAL_CLIP + 1  # interval symbols
_BASE_R: Final = 3 * _BASE_I  # (interval, contour) symbols
# n-grams that repeat one pitch: the all-unison interval n-gram, and every rhythm n-gram of unisons
_REPEAT_INTERVAL: Final = _ngram_codes(np.full(INTERVAL_NGRAM, INTERVAL_CLIP, np.int64), INTERVAL_NGRAM, _BASE_I)
_REPEAT_RHYTHM: Final = np.array(
    [
        int(_ngram_codes(np.array([INTERVAL_CLIP * 3 + c for c in combo], np.int64), RHYTHM_NGRAM, _BASE_R)[0])
        for combo in itertools.product(range(3), repeat=RHYTHM_NGRAM)
    ],
    np.int64,
)  # sorted: itertools.product counts up in the same base order as the codes


def _vector_from_table(table: np.ndarray) -> np.ndarray:
    onset, pitch = _skyline(table)
    out = np.zeros(VECTOR_DIM, np.float32)
    if len(onset) - INTERVAL_NGRAM < MIN_NGRAMS:
        return out
    interval = np.clip(np.diff(pitch), -INTERVAL_CLIP, INTERVAL_CLIP) + INTERVAL_CLIP
    ioi = np.diff(onset).astype(np.float64)
    log_ratio = np.log2(ioi[1:] / ioi[:-1])
    contour = np.where(log_ratio <= -RHYTHM_BAND, 0, np.where(log_ratio < RHYTHM_BAND, 1, 2))
    rhythm = interval[:-1] * 3 + contour
    codes = _ngram_codes(interval, INTERVAL_NGRAM, _BASE_I)
    if int(np.count_nonzero(codes != _REPEAT_INTERVAL[0])) < MIN_NGRAMS:
        return out  # too little melody: a scale, a test file, one repeated pitch
    v = _block(codes, _REPEAT_INTERVAL, _SALT_INTERVAL)
    if len(rhythm) >= RHYTHM_NGRAM:
        v = v + RHYTHM_WEIGHT * _block(_ngram_codes(rhythm, RHYTHM_NGRAM, _BASE_R), _REPEAT_RHYTHM, _SALT_RHYTHM)
    norm = float(np.linalg.norm(v))
    if norm > 0:
        out[:] = v / norm
    return out


def piece_vector(score: symusic.Score) -> np.ndarray:
    """A float32 vector of length VECTOR_DIM, unit L2 norm, for inner-product near-duplicate search.

    Design: the skyline (top pitched note of each chord, onsets within 1/12 quarter being one
    chord, drums left out) is read as a melody; its features are n-grams of what survives the
    alterations duplicates go through:

    * interval 5-grams (six notes): transposition moves no interval; tpq, tempo events and track
      order never enter; a re-arrangement that keeps the tune keeps most of them;
    * (interval, duration contour) 4-grams, weight 0.5: the contour says whether each inter-onset
      interval is shorter, about equal (ratio 0.81..1.23) or longer than the one before, so it is
      blind to tempo and time scale and robust to performance jitter, yet separates pieces that
      share a melodic outline but not a rhythm (the Goldberg variations share bass and harmony).

    Each block counts distinct n-grams with sqrt damping (a riff repeated 50 times does not swamp
    the rest), n-grams of one repeated pitch weigh 0.2 (drones and drum-like lines are common to
    unrelated songs), and goes through signed feature hashing into VECTOR_DIM buckets: random
    signs make bucket collisions cancel on average, so the inner product estimates the cosine
    between the n-gram count vectors (unsigned buckets saturate on long performances and make
    every pair of them look alike). Onsets are first put on the 1/96 quarter grid of
    :func:`content_hash`, so a copy saved again at 96 tpq gets the very same vector.

    A piece with fewer than MIN_NGRAMS interval n-grams that are not one repeated pitch (about 20
    melody onsets) gets a zero vector: an 8-note scale matches every other scale and a repeated
    note every other repeated note, so such pieces are only deduplicated by their hashes.

    Measured on the 320 readable files of the shared test data (271 with a vector):
    copies re-saved at tpq 96 or 4x, with tracks reversed or renamed, tempo events changed or
    pitched tracks moved +-3 score 1.0; lossy re-saves at tpq 120 and 192 score >= 0.75 (1st
    percentile 0.92; the lowest is a performance-timed melody whose onsets sit on the chord
    boundary); the 30 Goldberg variations score <= 0.24 between each other (mean 0.03);
    unrelated pieces <= 0.32 (99.9th percentile 0.19); Fur Elise in two editions 0.91, two
    arrangements of "Mary Had a Little Lamb" 0.86. Hence DEFAULT_THRESHOLD = 0.7.
    """
    return _vector_from_table(_note_table(score))


@dataclass(frozen=True, slots=True)
class DedupSignature:
    """Everything dedup needs from one score, computed from one pass over its notes."""

    content_hash: str
    content_hash_transposed: str
    vector: np.ndarray = field(repr=False)
    n_notes: int
    length_q: float  # end of the last note, in quarters


def signature(score: symusic.Score) -> DedupSignature:
    """Both hashes, the vector, the note count and the length of ``score`` (notes read once)."""
    table = _note_table(score)
    length = float((table[:, 1] + table[:, 2]).max()) / HASH_GRID if len(table) else 0.0
    return DedupSignature(
        content_hash=_digest(_CONTENT_TAG, table),
        content_hash_transposed=_digest(_TRANSPOSED_TAG, _transposed(table)),
        vector=_vector_from_table(table),
        n_notes=len(table),
        length_q=length,
    )


# ============================================================================================
# faiss index
# ============================================================================================
def _as_matrix(vectors: np.ndarray | Sequence[np.ndarray], n: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array (pieces x dim), got shape {x.shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"got {x.shape[0]} vectors for {n} piece ids; one vector per piece is needed")
    return x


def _versions() -> dict[str, str]:
    import faiss

    out = {"numpy": np.__version__, "faiss": getattr(faiss, "__version__", "unknown")}
    try:
        import symusic

        out["symusic"] = getattr(symusic, "__version__", "unknown")
    except ImportError:  # the index itself does not need symusic
        pass
    return out


def _as_ids(keys: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys as one Arrow string array."""
    import pyarrow as pa

    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks else pa.array([], pa.string())
    if isinstance(keys, pa.Array):
        return keys.cast(pa.string()) if keys.type != pa.string() else keys
    return pa.array([str(k) for k in keys], pa.string())


def _check_unique(ids: pa.Array) -> None:
    import pyarrow.compute as pc

    if len(ids) and pc.count_distinct(ids).as_py() != len(ids):
        raise ValueError("piece ids must be unique; got repeated ids")


def _write_ids(path: Path, ids: pa.Array) -> None:
    import pyarrow as pa

    table = pa.table({"id": ids})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_ids(data: bytes, name: str = "ids.arrow") -> pa.Array:
    """The ids of a saved index folder from the bytes of its ``ids.arrow`` (or older ``ids.json``)."""
    import pyarrow as pa

    if name.endswith(".json"):
        return pa.array(json.loads(data), pa.string())
    return _as_ids(pa.ipc.open_file(pa.py_buffer(data)).read_all().column("id"))


class _Shard:
    """A saved IVF shard: rows ``[start, start + n)`` of an index, read from its file when a search
    needs it and dropped after. The file stays open, so a shard can be read (and copied into the
    next version) even after ``curate`` has published a new folder and removed this one."""

    def __init__(self, path: Path, start: int, n: int) -> None:
        self.path, self.start, self.n = path, start, n
        self._file = open(path, "rb")  # noqa: SIM115 - held open for the life of the index; closed by close()

    def read(self) -> faiss.Index:
        import faiss

        self._file.seek(0)
        index = faiss.read_index(faiss.PyCallbackIOReader(self._file.read))
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(IVF_NPROBE, ivf.nlist)
        return index

    def copy_to(self, dest: Path) -> None:
        """``dest`` holds this shard: a hard link when the path is still this file, else a copy."""
        import os
        import shutil

        try:
            if os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino:
                os.link(self.path, dest)
                return
        except OSError:
            pass
        self._file.seek(0)
        with open(dest, "wb") as out:
            shutil.copyfileobj(self._file, out, 1 << 20)

    def close(self) -> None:
        self._file.close()


def _empty_like(index: faiss.Index) -> faiss.Index:
    """An empty IVF index with the lists (trained centroids) of ``index``, with a direct map."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.IndexFlatIP(ivf.d)
    quantizer.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    out = faiss.IndexIVFFlat(quantizer, ivf.d, ivf.nlist, faiss.METRIC_INNER_PRODUCT)
    out.nprobe = ivf.nprobe
    out.make_direct_map()
    return out


class NearDupIndex:
    """Piece vectors in a faiss inner-product index, searchable by vector or by piece id.

    Up to EXACT_MAX_N pieces the index is ``IndexFlatIP``: exact, no training, and cheap enough
    (a full k-NN self-join of 20k x 512 takes a few seconds on two cores, 50k about half a
    minute). Brute force grows with N squared, so above that ``IndexIVFFlat`` takes over
    (Lakh-scale, ~180k pieces): 4*sqrt(N) lists trained by k-means on a fixed-seed sample (64 vectors a list),
    IVF_NPROBE lists probed, which keeps the self-join to about 1% of the brute-force work.
    IVF rather than HNSW because it trains in seconds, builds without the graph's per-insert
    cost, and supports range search and reconstruction by id; near-duplicates (cosine >= 0.7) are
    close enough to their query to fall in one of the probed lists.

    An IVF index is saved as shards of SHARD_N vectors that share the trained lists
    (``shard-0000.faiss``, ...). A loaded one holds only its last shard in memory (where new vectors
    go); a search reads the other shards one at a time and merges their answers, which are those of
    the one index (every shard probes the same lists). So a nightly curate holds one shard, not
    every vector of the lake (365 MB for 180k pieces at 512 dimensions).
    """

    def __init__(
        self,
        index: faiss.Index,
        piece_ids: Sequence[str] | pa.Array,
        kind: Literal["flat", "ivf"],
        shards: Sequence[_Shard] = (),
        *,
        check_unique: bool = True,
    ) -> None:
        self._shards = list(shards)
        self._base = sum(s.n for s in self._shards)  # rows held by the saved shards; ``index`` holds the rest
        ids = _as_ids(piece_ids)
        if self._base + index.ntotal != len(ids):
            raise ValueError(f"index holds {self._base + index.ntotal} vectors but {len(ids)} piece ids were given")
        if check_unique:  # a loaded index was checked when it was built and extended
            _check_unique(ids)
        self.index = index
        self.ids = ids  # an Arrow string array, row order: no Python object per key (a Lakh lake has 500k tracks)
        self.kind = kind
        self.meta: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def piece_ids(self) -> list[str]:
        """Every id in row order, as a Python list (hundreds of MB for a Lakh-sized lake's tracks:
        prefer :attr:`ids`, :meth:`rows_of` and :meth:`keys_at`)."""
        return self.ids.to_pylist()

    def rows_of(self, keys: Sequence[str] | pa.Array) -> np.ndarray:
        """The rows of ``keys`` (-1 for a key this index does not hold)."""
        import pyarrow.compute as pc

        found = pc.index_in(_as_ids(keys), value_set=self.ids).fill_null(-1)
        return found.to_numpy(zero_copy_only=False).astype(np.int64)

    def keys_at(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        """The ids at ``rows``."""
        return self.ids.take(np.asarray(rows, np.int64)).to_pylist()

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def close(self) -> None:
        """Close the files of the saved shards (a search after this fails)."""
        for s in self._shards:
            s.close()

    @classmethod
    def build(
        cls,
        piece_ids: Sequence[str] | pa.Array,
        vectors: np.ndarray | Sequence[np.ndarray],
        *,
        kind: IndexKind = "auto",
        exact_max_n: int | None = None,
        nprobe: int = IVF_NPROBE,
    ) -> NearDupIndex:
        """Index ``vectors`` (one row per id); ``kind="auto"`` is flat up to ``exact_max_n`` pieces
        (EXACT_MAX_N by default)."""
        ids = _as_ids(piece_ids)
        x = _as_matrix(vectors, len(ids)) if len(ids) else np.zeros((0, VECTOR_DIM), np.float32)
        return cls.build_from(
            ids, lambda rows: x[rows], x.shape[1], kind=kind, exact_max_n=exact_max_n, nprobe=nprobe, chunk=len(ids)
        )

    @classmethod
    def build_from(
        cls,
        piece_ids: Sequence[str] | pa.Array,
        rows_of: Callable[[np.ndarray], np.ndarray],
        dim: int,
        *,
        kind: IndexKind = "auto",
        exact_max_n: int | None = None,
        nprobe: int = IVF_NPROBE,
        chunk: int = BUILD_CHUNK,
        spill: str | Path | None = None,
    ) -> NearDupIndex:
        """:meth:`build` from ``rows_of(row numbers) -> matrix``, asked for the IVF training sample
        and then ``chunk`` rows at a time (the sample too): the vectors are never all in memory at
        once beside the index (a lake's curate reads them from its tables batch by batch). The same
        index as :meth:`build` of the whole matrix.

        ``spill`` (a folder): an IVF index is written there as it is built, a shard of SHARD_N
        vectors at a time, and held as a loaded one is (its last shard in memory, the others read
        when a search needs them, the files kept open), so the driver never holds every vector
        (365 MB at 176k pieces, 380 MB for their 370k identity tracks). Its searches give what
        the one index gives (every shard probes the same lists); :meth:`save` links the files."""
        import faiss

        ids = _as_ids(piece_ids)
        n = len(ids)
        exact_max_n = EXACT_MAX_N if exact_max_n is None else exact_max_n
        if kind not in ("auto", "flat", "ivf"):
            raise ValueError(f"kind must be 'auto', 'flat' or 'ivf', got {kind!r}")
        chosen: Literal["flat", "ivf"] = "flat" if kind == "flat" or (kind == "auto" and n <= exact_max_n) else "ivf"
        if chosen == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = np.arange(n)
            if n > IVF_TRAIN_PER_LIST * nlist:  # k-means on a fixed-seed sample, not on every vector
                sample = np.sort(np.random.default_rng(0).choice(n, IVF_TRAIN_PER_LIST * nlist, replace=False))
            step = max(1, chunk)
            train = np.empty((len(sample), dim), np.float32)  # read a chunk at a time: one copy, not three
            for lo in range(0, len(sample), step):
                train[lo : lo + step] = rows_of(sample[lo : lo + step])
            index.train(train)
            del train
            index.nprobe = min(nprobe, nlist)
            index.make_direct_map()
            if spill is not None and n > SHARD_N:
                return cls._build_spilled(ids, rows_of, index, Path(spill), step)
        for lo in range(0, n, max(1, chunk)):
            index.add(np.ascontiguousarray(rows_of(np.arange(lo, min(n, lo + chunk))), dtype=np.float32))
        return cls(index, ids, chosen)

    @classmethod
    def _build_spilled(
        cls, ids: pa.Array, rows_of: Callable[[np.ndarray], np.ndarray], trained: faiss.Index, folder: Path, step: int
    ) -> NearDupIndex:
        """:meth:`build_from`'s IVF index written to ``folder`` a shard at a time (its last shard held)."""
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        n = len(ids)
        shards: list[_Shard] = []
        for start in range(0, n, SHARD_N):
            end = min(n, start + SHARD_N)
            part = _empty_like(trained)
            for lo in range(start, end, step):
                part.add(np.ascontiguousarray(rows_of(np.arange(lo, min(end, lo + step))), dtype=np.float32))
            if end == n:  # the last shard stays in memory, where new vectors go (as a loaded index)
                return cls(part, ids, "ivf", shards)
            path = folder / f"shard-{len(shards):04d}.faiss"
            faiss.write_index(part, str(path))
            shards.append(_Shard(path, start, end - start))
            del part
        raise AssertionError("unreachable: n > SHARD_N")

    def add(self, piece_ids: Sequence[str] | pa.Array, vectors: np.ndarray | Sequence[np.ndarray]) -> list[int]:
        """Append pieces (new ids only); their rows. A flat index that outgrows ``EXACT_MAX_N`` becomes IVF.

        An IVF index keeps the lists it was trained on: new vectors go to their nearest list, which
        is what k-means would mostly do again; ``curate`` rebuilds it when the lake has doubled.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = _as_ids(piece_ids)
        if not len(ids):
            return []
        dup = ids.filter(pc.is_in(ids, value_set=self.ids)).to_pylist()
        if dup or pc.count_distinct(ids).as_py() != len(ids):
            raise ValueError(f"piece ids already in the index or repeated: {(dup or ids.to_pylist())[:3]}")
        x = _as_matrix(vectors, len(ids))
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {x.shape[1]}; this index holds dimension {self.dim}")
        start = len(self.ids)
        both = pa.concat_arrays([self.ids, ids])
        if self.kind == "flat" and start + len(ids) > EXACT_MAX_N:
            old = self.index.reconstruct_n(0, start) if start else np.zeros((0, x.shape[1]), np.float32)
            rebuilt = NearDupIndex.build(both, np.concatenate([old, x]))
            self.index, self.kind = rebuilt.index, rebuilt.kind
        else:
            self.index.add(x)
        self.ids = both
        return list(range(start, start + len(ids)))

    def vectors_of(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors at ``rows`` (a matrix in that order); each saved shard is read once."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros((len(rows), self.dim), np.float32)
        mine = np.nonzero(rows >= self._base)[0]
        if len(mine):
            out[mine] = self.index.reconstruct_batch(rows[mine] - self._base)
        for s in self._shards:
            at = np.nonzero((rows >= s.start) & (rows < s.start + s.n))[0]
            if len(at):
                out[at] = s.read().reconstruct_batch(rows[at] - s.start)
        return out

    def pairs_of(self, rows: Sequence[int], threshold: float, k: int = PAIR_K) -> list[tuple[int, int, float]]:
        """Like :meth:`pairs`, for the pieces at ``rows`` only (each against the whole index)."""
        a, b, s = self.pair_arrays(rows, threshold, k)
        return list(zip(a.tolist(), b.tolist(), s.tolist(), strict=True))

    def pair_arrays(
        self, rows: Sequence[int] | np.ndarray, threshold: float, k: int = PAIR_K
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`pairs_of` as NumPy arrays (row a < row b, int64; score, float64), sorted by (a, b),
        one per pair at its best score: no Python object per pair (a first curate of a Lakh-sized
        lake finds millions)."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        rows = np.asarray(rows, np.int64)
        if not len(rows) or len(self) < 2:
            return empty
        out_a, out_b, out_s = [], [], []
        for lo in range(0, len(rows), BUILD_CHUNK):  # the query vectors a chunk at a time
            part = rows[lo : lo + BUILD_CHUNK]
            x = self.vectors_of(part)
            scores, hits = self._knn(x, k + 1)
            qi, col = np.nonzero((scores >= threshold) & (hits >= 0))
            i, j = part[qi], hits[qi, col].astype(np.int64)
            keep = (i != j) & np.any(x, axis=1)[qi]  # a zero vector (too short to compare) pairs with nothing
            i, j = i[keep], j[keep]
            out_a.append(np.minimum(i, j))
            out_b.append(np.maximum(i, j))
            out_s.append(scores[qi, col][keep].astype(np.float64))
            del x, scores, hits, qi, col, i, j, keep
        a, b, s = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)
        del out_a, out_b, out_s
        # one row per pair, its best score (lexsort: by a, then b, then score; the last of each pair)
        order = np.lexsort((s, b, a))
        a, b, s = a[order], b[order], s[order]
        last = np.ones(len(a), bool)
        last[:-1] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        return a[last], b[last], s[last]

    def vector(self, piece_id: str) -> np.ndarray:
        """The stored vector of ``piece_id``."""
        row = int(self.rows_of([piece_id])[0])
        if row < 0:
            raise KeyError(f"piece id {piece_id!r} is not in this index ({len(self)} pieces)")
        return self.vectors_of([row])[0]

    def _knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each query (scores, rows; -1 where there are fewer), 4,096
        queries at a time; with saved shards, each shard is read once and the answers merged."""
        k = min(k, len(self))
        if k <= 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        step = 4096
        if not self._shards:
            if len(q) <= step:
                return self.index.search(q, k)
            got = [self.index.search(q[lo : lo + step], k) for lo in range(0, len(q), step)]
            return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        scores = np.full((len(q), k), -np.inf, np.float32)
        hits = np.full((len(q), k), -1, np.int64)

        def merge(part: faiss.Index, start: int) -> None:
            kk = min(k, part.ntotal)
            if kk <= 0:
                return
            for lo in range(0, len(q), step):
                d, i = part.search(q[lo : lo + step], kk)
                d = np.where(i >= 0, d, -np.inf).astype(np.float32)
                i = np.where(i >= 0, i + start, -1)
                all_d = np.concatenate([scores[lo : lo + step], d], axis=1)
                all_i = np.concatenate([hits[lo : lo + step], i], axis=1)
                # best first; a tie keeps the lower row (the shards come in row order)
                order = np.argsort(-all_d, axis=1, kind="stable")[:, :k]
                scores[lo : lo + step] = np.take_along_axis(all_d, order, 1)
                hits[lo : lo + step] = np.take_along_axis(all_i, order, 1)

        for s in self._shards:
            merge(s.read(), s.start)
        merge(self.index, self._base)
        scores[hits < 0] = -np.finfo(np.float32).max  # as faiss fills a missing answer
        return scores, hits

    def search(self, query: str | np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` nearest pieces to a piece id (itself left out) or to a vector, best first.

        Scores are inner products of unit vectors (cosine), 1.0 for the same notes. A piece with a
        zero vector (too short to compare) has no neighbours: the answer is empty.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self_row = -1
        if isinstance(query, str):
            self_row = int(self.rows_of([query])[0])
            if self_row < 0:
                raise KeyError(f"piece id {query!r} is not in this index ({len(self)} pieces)")
            q = self.vector(query)
        else:
            q = np.asarray(query, dtype=np.float32).reshape(-1)
            if q.shape[0] != self.dim:
                raise ValueError(f"query vector has dimension {q.shape[0]}; this index holds dimension {self.dim}")
        if not np.any(q):
            return []
        scores, rows = self._knn(q[None, :], int(k) + (1 if self_row >= 0 else 0))
        keep = [(int(r), float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0 and r != self_row]
        keep = keep[: int(k)]
        return list(zip(self.keys_at([r for r, _ in keep]), [s for _, s in keep], strict=True))

    def pairs(self, threshold: float = DEFAULT_THRESHOLD, k: int = PAIR_K) -> list[tuple[int, int, float]]:
        """Row pairs ``(i, j, score)`` with i < j and score >= threshold, from each piece's k nearest.

        k-NN rather than range search keeps memory bounded (N x k) even when thousands of copies
        share one vector; such a group is still one cluster because union-find is transitive.
        """
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if len(self) < 2:
            return []
        return self.pairs_of(list(range(len(self))), threshold, k)

    def save(
        self, path: str | Path, config: dict[str, object] | None = None, extra: dict[str, object] | None = None
    ) -> Path:
        """Write ``path/ids.arrow`` (the ids, an Arrow IPC file), ``path/meta.json`` (config, versions, ``extra``) and the index:
        ``index.faiss`` (flat), or IVF shards ``shard-NNNN.faiss`` of SHARD_N vectors each (the
        saved shards of a loaded index linked or copied as they are, the vectors in memory written
        a shard at a time)."""
        import faiss

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        shard_sizes: list[int] | None = None
        if self.kind == "ivf":
            shard_sizes = []
            for s in self._shards:
                s.copy_to(folder / f"shard-{len(shard_sizes):04d}.faiss")
                shard_sizes.append(s.n)
            have = int(self.index.ntotal)
            if 0 < have <= SHARD_N:  # the held part is one shard as it is (adding its vectors again to an
                # empty copy assigns each to its list again: 0.7 s a save for 32k vectors)
                faiss.write_index(self.index, str(folder / f"shard-{len(shard_sizes):04d}.faiss"))
                shard_sizes.append(have)
                have = 0
            for lo in range(0, have, SHARD_N):
                n = min(SHARD_N, have - lo)
                part = _empty_like(self.index)
                part.add(self.index.reconstruct_n(lo, n))
                faiss.write_index(part, str(folder / f"shard-{len(shard_sizes):04d}.faiss"))
                shard_sizes.append(n)
                del part
            if not have and not shard_sizes:  # an empty IVF index: one empty shard keeps its lists
                faiss.write_index(_empty_like(self.index), str(folder / "shard-0000.faiss"))
                shard_sizes.append(0)
        else:
            faiss.write_index(self.index, str(folder / "index.faiss"))
        _write_ids(folder / "ids.arrow", self.ids)
        config = dict(config or VECTOR_CONFIG)
        meta = {
            **(extra or {}),
            "kind": self.kind,
            "n": len(self),
            "dim": self.dim,
            "vector_config": config,
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
            "versions": _versions(),
        }
        if shard_sizes is not None:
            meta["shards"] = shard_sizes
        (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, path: str | Path, config: dict[str, object] | None = None) -> NearDupIndex:
        """Read an index written by :meth:`save`; refuses one built with another vector scheme.

        An IVF index's last shard is read into memory, the others only when a search needs them.
        ``meta.json`` is on the loaded index as ``.meta``."""
        import faiss

        folder = Path(path)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        sizes = meta.get("shards")
        ids_name = "ids.json" if (folder / "ids.json").is_file() else "ids.arrow"  # ids.json: saved before 2026-12
        names = [ids_name, "meta.json"] + (
            [f"shard-{i:04d}.faiss" for i in range(len(sizes))] if isinstance(sizes, list) else ["index.faiss"]
        )
        for name in names:
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name} not found; a saved NearDupIndex folder holds ids.arrow, meta.json and "
                    "index.faiss or shard-NNNN.faiss"
                )
        want = config or VECTOR_CONFIG
        scheme = meta.get("vector_config", {}).get("scheme")
        if scheme != want["scheme"] or meta.get("dim") != want["dim"]:
            raise ValueError(
                f"index at {folder} holds vector scheme {scheme!r} dim {meta.get('dim')}; this code makes {want['scheme']!r} dim {want['dim']}: rebuild it"
            )
        ids = read_ids((folder / ids_name).read_bytes(), ids_name)
        shards: list[_Shard] = []
        if isinstance(sizes, list):
            start = 0
            for i, n in enumerate(sizes[:-1]):
                shards.append(_Shard(folder / f"shard-{i:04d}.faiss", start, int(n)))
                start += int(n)
            last = _Shard(folder / f"shard-{len(sizes) - 1:04d}.faiss", start, int(sizes[-1]))
            index = last.read()
            last.close()
        else:  # one file: a flat index, or an IVF index saved before shards
            index = faiss.read_index(str(folder / "index.faiss"))
        if meta["kind"] == "ivf":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = min(IVF_NPROBE, ivf.nlist)
        out = cls(index, ids, meta["kind"], shards, check_unique=False)
        out.meta = meta
        return out


def similar(index: NearDupIndex | str | Path, piece_id: str, k: int = 10) -> list[tuple[str, float]]:
    """``midicorpus similar PIECE_ID --k K``: the k nearest pieces with their cosine scores.

    ``index`` is a built :class:`NearDupIndex` or the folder one was saved to.
    """
    if not isinstance(index, NearDupIndex):
        index = NearDupIndex.load(index)
    return index.search(piece_id, k)


# ============================================================================================
# clusters
# ============================================================================================
@dataclass(frozen=True, slots=True)
class DupPair:
    """Why two pieces were joined: equal hashes (score 1.0) or vectors at ``score``."""

    a: str
    b: str
    score: float
    reason: PairReason


@dataclass(frozen=True, slots=True)
class Clusters:
    """``cluster_of`` maps every piece id to its cluster id, which is its representative's id."""

    cluster_of: dict[str, str]
    members: dict[str, list[str]]  # cluster id -> piece ids, representative first, then sorted
    pairs: list[DupPair]

    def representative(self, piece_id: str) -> str:
        return self.cluster_of[piece_id]

    @property
    def n_clusters(self) -> int:
        return len(self.members)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _optional(name: str, values: Sequence | None, n: int) -> list | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} piece ids; one per piece is needed")
    return values


def cluster(
    piece_ids: Sequence[str],
    vectors: np.ndarray | Sequence[np.ndarray],
    exact_hashes: Sequence[str | None],
    *,
    transposed_hashes: Sequence[str | None] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    n_notes: Sequence[int] | None = None,
    lengths: Sequence[float] | None = None,
    k: int = PAIR_K,
    index: NearDupIndex | None = None,
    near_pairs: Sequence[tuple[int, int, float]] | None = None,
) -> Clusters:
    """Union-find over equal content hashes, equal transposed hashes and vector pairs >= threshold.

    ``exact_hashes`` are content hashes (any other exact key, such as the byte sha256, works too);
    ``None`` and the hash of a score without notes join nothing: having no notes is no evidence
    of being a copy. Representative of a cluster: most ``n_notes``, then longest ``lengths``,
    then the smallest piece id; without counts and lengths, the smallest piece id. Pass the
    ``index`` already built for ``similar`` (same ids, same order) to avoid building a second
    one; ``vectors`` are then not read. ``near_pairs`` (row pairs with scores, e.g. stored by earlier
    runs) replace the index search: only those at or above ``threshold`` join.
    """
    ids = [str(p) for p in piece_ids]
    n = len(ids)
    hashes = _optional("exact_hashes", exact_hashes, n) or []
    t_hashes = _optional("transposed_hashes", transposed_hashes, n)
    notes = _optional("n_notes", n_notes, n)
    lens = _optional("lengths", lengths, n)
    if near_pairs is None:
        if index is None:
            index = NearDupIndex.build(ids, vectors)
        elif index.piece_ids != ids:
            raise ValueError("index was built for other piece ids (or another order) than piece_ids")
        near_pairs = index.pairs(threshold, k)
    uf = _UnionFind(n)
    pairs: list[DupPair] = []
    for reason, keys, empty in (
        ("content_hash", hashes, EMPTY_CONTENT_HASH),
        ("transposed_hash", t_hashes, EMPTY_TRANSPOSED_HASH),
    ):
        if keys is None:
            continue
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is None or key == empty:
                continue
            j = first.setdefault(key, i)
            if j != i and uf.find(i) != uf.find(j):
                uf.union(i, j)
                pairs.append(DupPair(ids[j], ids[i], 1.0, reason))  # type: ignore[arg-type]
    for i, j, score in near_pairs:
        if score < threshold:
            continue
        pairs.append(DupPair(ids[i], ids[j], score, "near_dup"))
        uf.union(i, j)

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)

    def rank(i: int) -> tuple[float, float, str]:
        return (-(notes[i] if notes else 0), -(lens[i] if lens else 0.0), ids[i])

    cluster_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for rows in groups.values():
        rep = min(rows, key=rank)
        cid = ids[rep]
        members[cid] = [cid] + sorted(ids[r] for r in rows if r != rep)
        for r in rows:
            cluster_of[ids[r]] = cid
    return Clusters(cluster_of=cluster_of, members=members, pairs=pairs)
