"""Immutable, versioned dataset snapshots: token shards per split, a manifest, a card.

``snapshots/<name>/<version>/`` (see DESIGN.md, "Snapshots") holds:

- ``manifest.json``: what was read (table versions = the lake commit that last wrote each
  table), the SQL selection, scheme, tokenizer hash and config, split policy and seed,
  library versions, and the sha256, size and counts of every data file.
- ``tokenizer.json``: the tokenizer in miditok's own format (``miditok.<Class>(params=path)``).
- ``README.md``: the card (counts, sources, licences and the attribution they require,
  how it was made). ``ATTRIBUTION.tsv``: one row per piece with its source and licence.
- ``<split>/tokens.npy``, ``<split>/index.npy``, ``<split>/sequences.parquet`` per split
  (``train``, ``valid``, ``test``); the format is in :data:`SHARD_FORMAT` and in the manifest.
- ``<split>/data-00000-of-00001.parquet``: the same sequences for Hugging Face ``datasets``
  (``load_dataset("<snapshot dir>")`` reads the card's YAML front matter; see :mod:`corpus.snapshot_hf`),
  with each piece's MIDI bytes when built ``with_midi``.

Versions come from content: the version is a hash of the data files and of the recipe
(selection, scheme, tokenizer, splits, seed), never of the time or of unrelated lake commits,
so the same selection from the same lake gives the same version and byte-identical shards.
A build is written in ``snapshots/.build-<random>/`` and renamed into place (atomic on one
file system); a killed build leaves only that temp directory, removed by the next build.

On an object-store lake (``s3://...``) there is no rename: the build is written in a local
temp folder, its files are uploaded to ``snapshots/<name>/<version>/`` and ``manifest.json``
last, as its own PUT. The manifest is the commit point: every reader (list, resolve, show,
verify, diff, :func:`local_snapshot`) considers only versions whose manifest exists, so an
interrupted upload is invisible, and the next ``create`` removes it (or uploads it again).
Training memory-maps the shards, so it reads a local copy: :func:`local_snapshot` downloads a
version into ``$MIDICORPUS_CACHE/snapshots/<name>/<version>`` (default cache
``~/.cache/midicorpus``), verifying every file's sha256 against the manifest before the copy
is renamed into place, and reuses a complete copy.

Splits are assigned per song group before augmentation: pieces in one dedup cluster, or
sharing a Million Song Dataset id or a Mutopia id, form one group (union-find); the group's
split is a stable hash of its key and the seed, so no cluster spans two splits, transposed
copies stay with their original, and a piece keeps its split across versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus import snapshot_hf as hf
from corpus.lake import Lake, _fsync_dir, now_utc
from corpus.progress import Step

FORMAT = "midicorpus-snapshot/2"  # 2: the Hugging Face Parquet files per split and the card's YAML
SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT = (0.9, 0.05, 0.05)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# the tables a snapshot reads; their versions go into the manifest
SOURCE_TABLES = ("pieces", "piece_facts", "piece_analysis", "dedup", "song_groups", "tokens", "tokenizers")

SHARD_FORMAT = {
    "layout": "<split>/tokens.npy, <split>/index.npy, <split>/sequences.parquet, <split>/data-00000-of-00001.parquet "
    "for split in train, valid, test",
    "tokens.npy": (
        "NumPy .npy (np.load(path, mmap_mode='r')). Single-vocabulary schemes: 1-D array of all token ids of "
        "the split, sequences concatenated. Multi-vocabulary schemes: 2-D array (n_tokens, n_vocabularies), "
        "one column per vocabulary. dtype uint16 when every id fits, else int32."
    ),
    "index.npy": "int64 array of n_sequences + 1 offsets: sequence i is tokens[index[i]:index[i+1]]",
    "sequences.parquet": (
        "one row per sequence, in index order: seq, piece_id, transpose (semitones), track (sequence number "
        "within the piece's token row: one per track when the tokenizer has no single stream), chunk (part "
        "number when max_seq_len cut the sequence), start, length, song_group, dedup_cluster"
    ),
    "order": "sequences sorted by piece_id, transpose, track, chunk; no BOS/EOS stored (see tokenizer.special_ids)",
    hf.HF_FILE: hf.HF_FORMAT,
}


class SnapshotError(ValueError):
    """A problem a user can act on (bad name, bad option, unknown snapshot, no tokens)."""


@dataclass(frozen=True)
class SnapshotSpec:
    """What to build. ``transpose``: ``none`` (the untransposed rows), ``normalize`` (each piece
    at its key-normalizing shift), ``augment:K`` (untransposed + shifts -K..K that exist)."""

    name: str
    scheme: str
    where: str | None = None
    transpose: str = "none"
    split: tuple[float, float, float] = DEFAULT_SPLIT
    seed: int = 0
    max_seq_len: int | None = None
    tokenizer_hash: str | None = None  # default: the latest tokenizer registered under ``scheme``
    with_midi: bool = False  # a ``midi`` column (each piece's raw bytes) in the Hugging Face files
    segment: tuple[int, int] | None = None  # (bars, hop): bar-aligned windows (``--segment bars:N[:HOP]``)
    mix: tuple[tuple[str, float], ...] | None = None  # (label, weight) per label: training draws (``--mix``)
    mix_by: str | None = None  # the SQL expression of the label (default ``source``)

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise SnapshotError(
                f"snapshot name {self.name!r} must be letters, digits, '.', '_' or '-' (not starting with '.' or '-')"
            )
        if len(self.split) != 3 or any(not isinstance(x, int | float) or x < 0 for x in self.split):
            raise SnapshotError(f"--split must be three non-negative fractions train,valid,test, got {self.split!r}")
        if abs(sum(self.split) - 1.0) > 1e-6 or self.split[0] <= 0:
            raise SnapshotError(f"--split fractions must sum to 1 with train > 0, got {','.join(map(str, self.split))}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise SnapshotError(f"--max-seq-len must be at least 2, got {self.max_seq_len}")
        if self.where is not None and ";" in self.where:
            raise SnapshotError(f"--where must be one SQL condition without ';', got {self.where!r}")
        transpose_shifts(self.transpose)
        if self.segment is not None and (
            len(self.segment) != 2 or self.segment[0] < 1 or not 1 <= self.segment[1] <= self.segment[0]
        ):
            raise SnapshotError(f"--segment must be bars:N[:HOP] with N >= 1 and 1 <= HOP <= N, got {self.segment!r}")
        if self.mix_by is not None and self.mix is None:
            raise SnapshotError("--mix-by needs --mix LABEL=WEIGHT,... (the weights of its labels)")
        if self.mix_by is not None and ";" in self.mix_by:
            raise SnapshotError(f"--mix-by must be one SQL expression without ';', got {self.mix_by!r}")
        if self.mix is not None:
            check_mix(self.mix)


def parse_segment(text: str) -> tuple[int, int]:
    """``"bars:16"`` or ``"bars:16:8"`` to (bars, hop); one clear error otherwise."""
    parts = text.split(":")
    try:
        if parts[0] != "bars" or len(parts) not in (2, 3):
            raise ValueError
        n = int(parts[1])
        hop = int(parts[2]) if len(parts) == 3 else n
    except ValueError:
        raise SnapshotError(
            f"--segment must be bars:N or bars:N:HOP (e.g. bars:2, bars:16, bars:16:8), got {text!r}"
        ) from None
    if n < 1 or not 1 <= hop <= n:
        raise SnapshotError(f"--segment bars:N:HOP needs N >= 1 and 1 <= HOP <= N, got {text!r}")
    return n, hop


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"lakh=0.5,mutopia=0.3,music21=0.2"`` to ((label, weight), ...) sorted by label; one clear error otherwise."""
    out: dict[str, float] = {}
    for part in text.split(","):
        label, eq, w = part.partition("=")
        label = label.strip()
        try:
            if not eq or not label:
                raise ValueError
            weight = float(w)
        except ValueError:
            raise SnapshotError(
                f"--mix must be LABEL=WEIGHT,... like lakh=0.5,mutopia=0.3,music21=0.2, got {part!r} in {text!r}"
            ) from None
        if label in out:
            raise SnapshotError(f"--mix names label {label!r} twice")
        out[label] = weight
    mix = tuple(sorted(out.items()))
    check_mix(mix)
    return mix


def check_mix(mix: Sequence[tuple[str, float]]) -> None:
    bad = [f"{k}={w}" for k, w in mix if not w >= 0 or w != w]
    if bad:
        raise SnapshotError(f"--mix weights must be non-negative, got {', '.join(bad)}")
    total = sum(w for _, w in mix)
    if abs(total - 1.0) > 1e-6:
        raise SnapshotError(f"--mix weights must sum to 1, got {total:g} ({','.join(f'{k}={w:g}' for k, w in mix)})")


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` to a tuple; one clear error otherwise."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise SnapshotError(f"--split must be three fractions train,valid,test like 0.9,0.05,0.05, got {text!r}")
    return parts  # type: ignore[return-value]


def transpose_shifts(mode: str) -> tuple[str, int]:
    if mode in ("none", "normalize"):
        return mode, 0
    if mode.startswith("augment:"):
        with contextlib.suppress(ValueError):
            k = int(mode.split(":", 1)[1])
            if 1 <= k <= 12:
                return "augment", k
    raise SnapshotError(f"--transpose must be none, normalize or augment:K with K in 1..12, got {mode!r}")


@dataclass
class SnapshotResult:
    name: str
    version: str
    path: Path | str  # the local folder, or the version's URL on an object-store lake
    created: bool  # False when this version existed already
    manifest: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        c = self.manifest.get("counts", {})
        what = "created" if self.created else "already there (same content)"
        per = ", ".join(f"{s} {c.get(s, {}).get('tokens', 0):,}" for s in SPLITS)
        return (
            f"snapshot {self.name}@{self.version} {what}: {c.get('pieces', 0)} pieces, {c.get('sequences', 0)} sequences, "
            f"{c.get('tokens', 0):,} tokens ({per}) at {self.path}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields of :meth:`line`, for ``snapshot create --format json``."""
        c = self.manifest.get("counts", {})
        return {
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "pieces": c.get("pieces", 0),
            "sequences": c.get("sequences", 0),
            "tokens": c.get("tokens", 0),
            "splits": {sp: c.get(sp, {}) for sp in SPLITS},
            "path": str(self.path),
        }


# ----------------------------------------------------------------------------- helpers
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_of(group_key: str, seed: int, fractions: Sequence[float]) -> str:
    """The split of a group: a stable hash of (seed, key) mapped to [0, 1), cut at the fractions."""
    digest = hashlib.sha256(f"{seed}\x00{group_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        acc += frac
        if u < acc:
            return name
    return next(s for s, f in zip(reversed(SPLITS), reversed(fractions), strict=True) if f > 0)


_KIND_ORDER = {"msd": 0, "mutopia": 1, "song": 2, "cluster": 3}


def song_groups(pieces: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Union-find over pieces sharing any key; each piece's group key.

    ``pieces`` maps a piece to its keys (``song:<group>``, ``cluster:<rep>``, ``msd:<id>``, ``mutopia:<id>``).
    The group key is the smallest key of the group by (kind, value), MSD ids first: they
    are external and stable, while a dedup representative can change when a bigger
    duplicate arrives.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def rank(k: str) -> tuple[int, str]:
        kind = k.split(":", 1)[0]
        return (_KIND_ORDER.get(kind, 9), k)

    for keys in pieces.values():
        ks = sorted(set(keys), key=rank)
        for k in ks:
            parent.setdefault(k, k)
        for k in ks[1:]:
            a, b = find(ks[0]), find(k)
            if a != b:
                lo, hi = sorted((a, b), key=rank)
                parent[hi] = lo
    return {pid: find(sorted(set(keys), key=rank)[0]) for pid, keys in pieces.items()}


def assign_splits(
    unit_of: Mapping[str, str], seed: int, fractions: Sequence[float], previous: Mapping[str, str]
) -> dict[str, str]:
    """The split of every piece: per unit (song group), the split most of its pieces had in
    ``previous`` (ties: train, valid, test), else :func:`split_of` of the unit key."""
    members: dict[str, list[str]] = {}
    for p, u in unit_of.items():
        members.setdefault(u, []).append(p)
    out: dict[str, str] = {}
    for u, pids in members.items():
        votes = {sp: 0 for sp in SPLITS}
        for p in pids:
            if p in previous:
                votes[previous[p]] += 1
        chosen = (
            max(SPLITS, key=lambda sp: (votes[sp], -SPLITS.index(sp)))
            if any(votes.values())
            else split_of(u, seed, fractions)
        )
        for p in pids:
            out[p] = chosen
    return out


def leakage_check(pieces: Mapping[str, tuple[str, str | None, str | None]]) -> dict[str, Any]:
    """From ``{piece: (split, song_group, dedup_cluster)}``: how many groups and clusters span two splits."""
    out: dict[str, Any] = {}
    for what, at in (("song_groups", 1), ("dedup_clusters", 2)):
        splits: dict[str, set[str]] = {}
        for v in pieces.values():
            if v[at] is not None:
                splits.setdefault(v[at], set()).add(v[0])
        spanning = sorted(k for k, sp in splits.items() if len(sp) > 1)
        out[what] = len(splits)
        out[f"{what}_spanning_splits"] = len(spanning)
        out[f"{what}_spanning_examples"] = spanning[:10]
    return out


def leakage_line(leak: Mapping[str, Any]) -> str:
    return (
        f"{leak['song_groups_spanning_splits']} song groups span two splits ({leak['song_groups']} song groups); "
        f"{leak['dedup_clusters_spanning_splits']} dedup clusters span two splits ({leak['dedup_clusters']} clusters)"
    )


# ----------------------------------------------------------------------------- columnar forms
# ``build`` keeps per-piece and per-sequence state in Arrow and NumPy columns, not in Python objects,
# so the driver's memory grows with a few bytes per piece, not with dicts and lists per row. Each of
# these functions gives what its per-piece counterpart above gives (song_groups, assign_splits,
# leakage_check), for every piece of a selection at once; tests/test_snapshot.py checks the bytes.


def _str_col(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A string column as one array, nulls written as Python's f-string writes None ('None')."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.fill_null(arr.cast(pa.string()), "None")


def _list_keys(lists: pa.Array | pa.ChunkedArray, prefix: str) -> tuple[pa.Array, np.ndarray]:
    """``prefix + value`` of every element of a list column, and the row each came from (null lists: none)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    values = _str_col(pc.list_flatten(lists))
    rows = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    return pc.binary_join_element_wise(pa.scalar(prefix), values, ""), rows


def _unit_keys(sel: pa.Table) -> pa.Array:
    """The song-group key of every piece of ``sel`` (columns piece_id, song_group, dedup_cluster,
    msd_ids, mutopia_ids): :func:`song_groups` of the keys ``song:``, ``cluster:``, ``msd:``,
    ``mutopia:``, computed on integer columns. The keys are ranked by (kind, key) as :func:`song_groups`
    ranks them; a union-find over the ranks, with each root the smallest rank of its component
    (hook every root to the smallest root across an edge, compress, repeat), gives each piece the
    smallest key of its group."""
    n = sel.num_rows
    parts: list[tuple[pa.Array, np.ndarray]] = [
        (pc.binary_join_element_wise("song:", _str_col(sel.column("song_group")), ""), np.arange(n)),
        (pc.binary_join_element_wise("cluster:", _str_col(sel.column("dedup_cluster")), ""), np.arange(n)),
        _list_keys(sel.column("msd_ids"), "msd:"),
        _list_keys(sel.column("mutopia_ids"), "mutopia:"),
    ]
    keys = pa.concat_arrays([p[0].cast(pa.string()) for p in parts])
    piece_of = np.concatenate([p[1].astype(np.int64) for p in parts])
    enc = (
        pc.dictionary_encode(keys).combine_chunks() if isinstance(keys, pa.ChunkedArray) else pc.dictionary_encode(keys)
    )
    uniq = enc.dictionary
    kind = np.full(len(uniq), 9, dtype=np.int8)
    for name, order in _KIND_ORDER.items():  # kind = the text before the first ':', as song_groups reads it
        kind[np.asarray(pc.starts_with(uniq, f"{name}:").to_numpy(zero_copy_only=False), dtype=bool)] = order
    ranked = pc.sort_indices(
        pa.table({"kind": kind, "key": uniq}), sort_keys=[("kind", "ascending"), ("key", "ascending")]
    )
    order = np.asarray(ranked.to_numpy(), dtype=np.int64)
    rank_of = np.empty(len(uniq), dtype=np.int64)
    rank_of[order] = np.arange(len(uniq))
    key_rank = rank_of[np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]
    first = np.full(n, len(uniq), dtype=np.int64)  # per piece, its smallest key
    np.minimum.at(first, piece_of, key_rank)
    u, v = key_rank, first[piece_of]  # edges: every key of a piece to the piece's smallest key
    parent = np.arange(len(uniq), dtype=np.int64)
    while True:
        ru, rv = parent[u], parent[v]
        if np.array_equal(ru, rv):
            break
        lo = np.minimum(ru, rv)
        np.minimum.at(parent, ru, lo)
        np.minimum.at(parent, rv, lo)
        while True:  # parent[x] <= x always, so this ends, with every parent a root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return uniq.take(pa.array(order[parent[first]]))


_SPLIT_NAMES = pa.array(SPLITS, pa.string())


def _split_codes(
    units: pa.Array, seed: int, fractions: Sequence[float], pieces: pa.Array, previous: pa.Table | None
) -> tuple[np.ndarray, np.ndarray]:
    """(split, hashed split) of every piece as indices into SPLITS: :func:`assign_splits` with and
    without ``previous`` (a table of piece_id and split), given each piece's unit key ``units``.
    One :func:`split_of` per unit, not per piece."""
    enc = pc.dictionary_encode(units)
    unit_of = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    groups = enc.dictionary
    by_unit = np.empty(len(groups), dtype=np.int8)
    code = {sp: i for i, sp in enumerate(SPLITS)}
    step = 65536
    for i in range(0, len(groups), step):  # Python strings one slice at a time
        for j, key in enumerate(groups.slice(i, step).to_pylist()):
            by_unit[i + j] = code[split_of(key, seed, fractions)]
    hashed = by_unit[unit_of]
    if previous is None or previous.num_rows == 0:
        return hashed, hashed
    at = pc.index_in(pieces, value_set=previous.column("piece_id").combine_chunks())
    had = np.asarray(pc.is_valid(at).to_numpy(zero_copy_only=False), dtype=bool)
    prev_split = previous.column("split").combine_chunks().take(at.filter(pc.is_valid(at)))
    prev_code = np.asarray(pc.index_in(prev_split, value_set=_SPLIT_NAMES).to_numpy(zero_copy_only=False))
    votes = np.zeros((len(groups), len(SPLITS)), dtype=np.int64)
    np.add.at(votes, (unit_of[had], prev_code.astype(np.int64)), 1)
    voted = votes.any(axis=1)
    chosen = np.where(voted, votes.argmax(axis=1), by_unit).astype(np.int8)  # argmax: ties to train, valid, test
    return chosen[unit_of], hashed


SEQ_COLUMNS = ("seq", "piece_id", "transpose", "track", "chunk", "start", "length", "song_group", "dedup_cluster")
SEGMENT_COLUMNS = ("segment_start_bar", "segment_end_bar")
# the columns a sequence takes from its token row, with their type in sequences.parquet
_ROW_COLUMNS = {
    "piece_id": pa.string(),
    "transpose": pa.int32(),
    "song_group": pa.string(),
    "dedup_cluster": pa.string(),
    "source": pa.string(),
    "license": pa.string(),
    "mix_label": pa.string(),
}


def _sequences(rows: pa.Table, max_seq_len: int | None) -> tuple[pa.Table, np.ndarray, int]:
    """The sequences of a split's token rows, the offsets of index.npy and the number of tokens: per
    row its ``seq_lengths`` (one per track), each cut at ``max_seq_len``. The sequences come as numbers
    only (seq, row, track, chunk, start, length; ``row`` indexes ``rows``): :func:`_seq_columns` adds
    what a sequence takes from its row, for the slice that needs it, so a split's strings are not held
    once per sequence while its tokens are written."""
    lists = rows.column("seq_lengths").combine_chunks()
    per_row = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    lengths = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    row_of = np.repeat(np.arange(rows.num_rows, dtype=np.int64), per_row)
    track = np.arange(len(lengths), dtype=np.int64) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    track_start = np.cumsum(lengths) - lengths
    step = np.full(len(lengths), max_seq_len, dtype=np.int64) if max_seq_len else np.maximum(lengths, 1)
    n_chunks = (lengths + step - 1) // step  # 0 for an empty track
    of = np.repeat(np.arange(len(lengths), dtype=np.int64), n_chunks)
    chunk = np.arange(len(of), dtype=np.int64) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    s0 = chunk * step[of]
    start = track_start[of] + s0
    length = np.minimum(step[of], lengths[of] - s0)
    tbl = pa.table(
        {
            "seq": pa.array(np.arange(len(of), dtype=np.int64)),
            "row": pa.array(row_of[of]),
            "track": pa.array(track[of].astype(np.int32)),
            "chunk": pa.array(chunk.astype(np.int32)),
            "start": pa.array(start),
            "length": pa.array(length),
        }
    )
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), start + length])
    return tbl, offsets, int(lengths.sum())


def _seq_columns(seqs: pa.Table, rows: pa.Table, names: Sequence[str]) -> dict[str, pa.Array]:
    """Columns ``names`` of the sequences ``seqs`` (a slice of :func:`_sequences`' or :func:`_segments`'
    table), each one array: a sequence's own, or its token row's (``rows``, by ``row``) cast to its
    type in sequences.parquet (:data:`_ROW_COLUMNS`)."""
    row = seqs.column("row").combine_chunks()
    out: dict[str, pa.Array] = {}
    for name in names:
        if name in _ROW_COLUMNS:
            col = rows.column(name).take(row).cast(_ROW_COLUMNS[name])
        else:
            col = seqs.column(name)
        out[name] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return out


def _seq_table(seqs: pa.Table, rows: pa.Table, mix: bool) -> pa.Table:
    """sequences.parquet's table: :data:`SEQ_COLUMNS`, the segment bars (``--segment``) and ``mix_label``
    (``--mix``), every column one array (the bytes do not depend on how the rows were read)."""
    names = [*SEQ_COLUMNS]
    if "segment_start_bar" in seqs.column_names:
        names += SEGMENT_COLUMNS
    if mix:
        names.append("mix_label")
    cols = _seq_columns(seqs, rows, names)
    return pa.Table.from_arrays([cols[n] for n in names], names=names)


def _hf_meta(seqs: pa.Table, rows: pa.Table) -> Callable[[int, int], pa.Table]:
    """What the Hugging Face file of a split needs of its sequences [g0, g1): the columns of
    sequences.parquet and the piece's ``source``, ``license`` (and the ``segment`` struct), built
    for one row group at a time (:class:`corpus.snapshot_hf.HFWriter`)."""
    names = ["seq", "piece_id", "transpose", "track", "chunk", "song_group", "dedup_cluster", "source", "license"]
    segment = "segment_start_bar" in seqs.column_names
    if segment:
        names += SEGMENT_COLUMNS

    def meta(g0: int, g1: int) -> pa.Table:
        cols = _seq_columns(seqs.slice(g0, g1 - g0), rows, names)
        if segment:
            cols["segment"] = pa.StructArray.from_arrays(
                [cols.pop("segment_start_bar"), cols.pop("segment_end_bar")], names=["start_bar", "end_bar"]
            )
        return pa.table(cols)

    return meta


def segment_windows(n_bars: int, bars: int, hop: int) -> list[tuple[int, int]]:
    """The bar ranges [a, b) of a sequence of ``n_bars`` bars: windows of ``bars`` bars every ``hop``
    bars from bar 0, the last one the first that reaches the end (it may be shorter)."""
    out: list[tuple[int, int]] = []
    a = 0
    while a < n_bars:
        out.append((a, min(a + bars, n_bars)))
        if a + bars >= n_bars:
            break
        a += hop
    return out


def _cut_on_bars(starts: Sequence[int], end: int, limit: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """A window's bars (``starts``: token index of each bar, ``end``: the window's end) cut into parts of
    at most ``limit`` tokens at bar lines: (first token, tokens, first bar, end bar) per part, bars
    counted from the window's first; a bar longer than ``limit`` is cut at the token count (counted)."""
    parts: list[tuple[int, int, int, int]] = []
    long_bars = 0
    bounds = [*starts, end]
    i, n = 0, len(starts)
    while i < n:
        a = bounds[i]
        j = i + 1
        while j < n and bounds[j + 1] - a <= limit:
            j += 1
        if bounds[j] - a > limit:  # bar i alone is longer than the limit: cut it by tokens
            long_bars += 1
            for s0 in range(a, bounds[i + 1], limit):
                parts.append((s0, min(limit, bounds[i + 1] - s0), i, i + 1))
            i += 1
            continue
        parts.append((a, bounds[j] - a, i, j))
        i = j
    return parts, long_bars


MMM_SEGMENT_POLICY = (
    "; MMM: a window is across every track (as MMM trains on bar windows of all tracks), each track block's "
    "Track_Start and Program, its bars of the window and its Track_End, in track order, an MMM sequence of its "
    "own; cut at max_seq_len into parts that each keep every block's header and Track_End"
)


def _cut_slices(slices: list[tuple[int, int]], limit: int) -> list[list[tuple[int, int]]]:
    """The tokens of ``slices`` ((first, length) each, in order) cut into parts of ``limit`` tokens."""
    parts: list[list[tuple[int, int]]] = [[]]
    room = limit
    for first, n in slices:
        while n > 0:
            if room == 0:
                parts.append([])
                room = limit
            take = min(n, room)
            parts[-1].append((first, take))
            first, n, room = first + take, n - take, room - take
    return [p for p in parts if p]


def _block_windows(
    blocks: list[list[int]], bars: int, hop: int, max_seq_len: int | None, counts: dict[str, int]
) -> Iterator[tuple[list[tuple[int, int]], int, int, int]]:
    """MMM: the windows of a sequence of track blocks (``blocks``: per block, the index of each bar,
    then its ``Track_End``; :func:`corpus.tokenize.bars.from_mmm`), each across every block: its
    header, its bars of the window and its ``Track_End``. Yields (slices, first bar, end bar, part
    number in its window) per part; a window longer than ``max_seq_len`` is cut at bar lines (every
    part has every block's header and end), a bar longer than the limit with them at the token count
    (counted)."""
    n_bars = len(blocks[0]) - 1 if blocks else 0
    heads = [(0 if j == 0 else blocks[j - 1][-1] + 1, bl[0]) for j, bl in enumerate(blocks)]
    overhead = sum(h1 - h0 + 1 for h0, h1 in heads)
    cost = [sum(bl[k + 1] - bl[k] for bl in blocks) for k in range(n_bars)]

    def slices(a: int, b: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for (h0, h1), bl in zip(heads, blocks, strict=True):
            for first, n in ((h0, h1 - h0), (bl[a], bl[b] - bl[a]), (bl[-1], 1)):
                if n > 0:
                    if out and out[-1][0] + out[-1][1] == first:  # contiguous: one slice
                        out[-1] = (out[-1][0], out[-1][1] + n)
                    else:
                        out.append((first, n))
        return out

    counts["bars_total"] += n_bars
    for a, b in segment_windows(n_bars, bars, hop):
        counts["segments"] += 1
        if sum(cost[a:b]) == 0:
            counts["empty_segments"] += 1
            continue
        if not max_seq_len or overhead + sum(cost[a:b]) <= max_seq_len:
            yield slices(a, b), a, b, 0
            continue
        i, chunk = a, 0
        while i < b:
            j, size = i + 1, overhead + cost[i]
            while j < b and size + cost[j] <= max_seq_len:
                size += cost[j]
                j += 1
            if size > max_seq_len:  # bar i alone with the blocks' headers and ends: cut by tokens
                counts["long_bars_cut"] += 1
                for part in _cut_slices(slices(i, i + 1), max_seq_len):
                    yield part, i, i + 1, chunk
                    chunk += 1
            else:
                yield slices(i, j), i, j, chunk
                chunk += 1
            i = j


def _segments(
    rows: pa.Table, bars: int, hop: int, max_seq_len: int | None, blocks: bool = False
) -> tuple[pa.Table, np.ndarray, int, np.ndarray, dict[str, int]]:
    """:func:`_sequences` for ``--segment``: per row and track, bar-aligned windows (:func:`segment_windows`
    of its ``bar_starts``), each cut at bar lines at ``max_seq_len``; empty windows dropped (counted).
    ``blocks`` (MMM): a row's ``bar_starts`` are per track block of its one sequence, and a window takes
    its bars from every block (:func:`_block_windows`). Returns the sequences as numbers, as :func:`_sequences`
    does, with their bars (``start`` is the position in tokens.npy, where the sequences lie one after the
    other), the index offsets, the number of tokens, the slices of every sequence in its row's ids (row, first token, length, sequence; for
    :func:`_gather`) and the counts."""
    lengths_col = rows.column("seq_lengths").to_pylist()
    starts_col = rows.column("bar_starts").to_pylist()
    rec: dict[str, list[int]] = {k: [] for k in ("row", "length", "track", "chunk", "bar0", "bar1")}
    cuts: list[tuple[int, int, int, int]] = []
    counts = {"segments": 0, "empty_segments": 0, "long_bars_cut": 0, "bars_total": 0}

    def add(r: int, slices: list[tuple[int, int]], track: int, chunk: int, bar0: int, bar1: int) -> None:
        seq = len(rec["row"])
        for first, n in slices:
            cuts.append((r, first, n, seq))
        for k, v in (
            ("row", r),
            ("length", sum(n for _, n in slices)),
            ("track", track),
            ("chunk", chunk),
            ("bar0", bar0),
            ("bar1", bar1),
        ):
            rec[k].append(v)

    for r, (lengths, bstarts) in enumerate(zip(lengths_col, starts_col, strict=True)):
        if blocks:
            if bstarts is None or len(lengths) != 1 or len({len(x) for x in bstarts}) > 1:
                raise RuntimeError(
                    f"row {r}: {len(bstarts or [])} track blocks of unequal bars or {len(lengths)} sequences"
                )
            for slices, a, b, chunk in _block_windows(bstarts, bars, hop, max_seq_len, counts):
                add(r, slices, 0, chunk, a, b)
            continue
        if bstarts is None or len(bstarts) != len(lengths):
            raise RuntimeError(f"row {r}: {len(bstarts or [])} bar lists for {len(lengths)} sequences")
        offset = 0
        for track, (n, bs) in enumerate(zip(lengths, bstarts, strict=True)):
            counts["bars_total"] += len(bs)
            for a, b in segment_windows(len(bs), bars, hop):
                lo = bs[a]
                hi = bs[b] if b < len(bs) else n
                counts["segments"] += 1
                if hi <= lo:
                    counts["empty_segments"] += 1
                    continue
                if max_seq_len:
                    parts, cut = _cut_on_bars([x - lo for x in bs[a:b]], hi - lo, max_seq_len)
                    counts["long_bars_cut"] += cut
                else:
                    parts = [(0, hi - lo, 0, b - a)]
                for chunk, (p0, plen, pb0, pb1) in enumerate(p for p in parts if p[1] > 0):
                    add(r, [(offset + lo + p0, plen)], track, chunk, a + pb0, a + pb1)
            offset += n
    length = np.asarray(rec["length"], dtype=np.int64)
    start = np.cumsum(length) - length
    tbl = pa.table(
        {
            "seq": pa.array(np.arange(len(length), dtype=np.int64)),
            "row": pa.array(np.asarray(rec["row"], dtype=np.int64)),
            "track": pa.array(np.asarray(rec["track"], dtype=np.int32)),
            "chunk": pa.array(np.asarray(rec["chunk"], dtype=np.int32)),
            "start": pa.array(start),
            "length": pa.array(length),
            "segment_start_bar": pa.array(np.asarray(rec["bar0"], dtype=np.int32)),
            "segment_end_bar": pa.array(np.asarray(rec["bar1"], dtype=np.int32)),
        }
    )
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), start + length])
    src = np.asarray(cuts, dtype=np.int64).reshape(-1, 4)
    return tbl, offsets, int(length.sum()), src, counts


def _gather(batches: Iterable[pa.Array], src: np.ndarray) -> Iterator[pa.Array]:
    """The ids of the segments (``src``: slices of row, first token in the row's ids, length, sequence;
    rows ascending, a sequence's slices in one row), from the batches of whole rows: one list per
    sequence, its slices joined, in order."""
    row0 = 0
    for batch in batches:
        row1 = row0 + len(batch)
        lo, hi = np.searchsorted(src[:, 0], [row0, row1], side="left")
        flat = batch.flatten()
        base = np.asarray(batch.offsets.to_numpy(), dtype=np.int64) - int(batch.offsets[0].as_py())
        part = src[lo:hi]
        first = base[part[:, 0] - row0] + part[:, 1]
        n = part[:, 2]
        idx = np.repeat(first - (np.cumsum(n) - n), n) + np.arange(int(n.sum()), dtype=np.int64)
        taken = flat.take(pa.array(idx))
        per_seq = np.bincount(part[:, 3] - part[0, 3], weights=n).astype(np.int64) if len(part) else n
        offs = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(per_seq)]).astype(np.int32)
        yield pa.ListArray.from_arrays(pa.array(offs), taken)
        row0 = row1


def _no_bars_line(scheme: str, tokinfo: Mapping[str, Any], n: int, of: int) -> str:
    """Why ``--segment`` cannot cut these rows, and what to do, in one line."""
    from corpus.tokenize import bars, presets

    tok, _ = presets.load_from_text(tokinfo["config_json"])
    if not bars.supported(tok):
        return f"--segment cannot cut scheme {scheme!r} ({tokinfo['tokenization']}): {bars.UNSUPPORTED}"
    return (
        f"--segment needs bar starts, and {n} of {of} token rows of scheme {scheme!r} (tokenizer {tokinfo['hash']}) "
        f"were tokenized before they were stored; add them with 'midicorpus tokenize --scheme {scheme} --redo-bars' "
        "(same ids, rows replaced), then run this again"
    )


def _mix_plan(rows: pa.Table, mix: Sequence[tuple[str, float]] | None, by: str) -> dict[str, Any]:
    """The manifest's ``mix``: the weights, and per label the train pieces and tokens and how many times the
    loader's draw repeats its tokens per epoch (weight x train tokens / the label's tokens). Every label
    of --mix must have train pieces and every train label a weight (0 leaves it out): one clear error."""
    weights = dict(mix or ())
    train = rows.filter(pc.equal(rows.column("split"), "train"))
    labels = pc.fill_null(train.column("mix_label").cast(pa.string()), "NULL")
    per = (
        pa.table({"label": labels, "piece_id": train.column("piece_id"), "n": train.column("n_tokens")})
        .group_by("label")
        .aggregate([("piece_id", "count_distinct"), ("n", "sum")])
    )
    have = {r["label"]: (int(r["piece_id_count_distinct"]), int(r["n_sum"] or 0)) for r in per.to_pylist()}
    absent = sorted(set(weights) - set(have))
    if absent:
        raise SnapshotError(
            f"--mix label(s) {', '.join(map(repr, absent))} have no train pieces; labels of {by} in the selection: "
            f"{', '.join(f'{k} ({v[0]} pieces)' for k, v in sorted(have.items())) or 'none'}"
        )
    unweighted = sorted(set(have) - set(weights))
    if unweighted:
        raise SnapshotError(
            f"--mix gives no weight to label(s) {', '.join(f'{k!r} ({have[k][0]} pieces)' for k in unweighted)} of {by}; "
            "give every label a weight (0 leaves it out of training) or narrow the selection with --where"
        )
    total = sum(n for _, n in have.values())
    return {
        "by": by,
        "weights": weights,
        "splits": ["train"],  # valid and test are never re-weighted
        "policy": "per epoch the loader draws, for each label, whole passes over a permutation of its train sequences "
        "(from (seed, epoch)) until weight x the split's tokens are drawn, then shuffles all drawn sequences",
        "labels": {
            k: {
                "weight": weights[k],
                "pieces": have[k][0],
                "tokens": have[k][1],
                "repeats_per_epoch": round(weights[k] * total / have[k][1], 4) if have[k][1] else 0.0,
            }
            for k in sorted(have)
        },
    }


def _leakage(pieces: pa.Table) -> dict[str, Any]:
    """:func:`leakage_check` of a table of split, song_group, dedup_cluster (one row per piece)."""
    out: dict[str, Any] = {}
    for what, col in (("song_groups", "song_group"), ("dedup_clusters", "dedup_cluster")):
        t = pieces.select([col, "split"]).filter(pc.is_valid(pieces.column(col)))
        per = t.group_by(col).aggregate([("split", "count_distinct")])
        spanning = per.filter(pc.greater(per.column("split_count_distinct"), 1)).column(col)
        spanning = spanning.take(pc.sort_indices(spanning))
        out[what] = per.num_rows
        out[f"{what}_spanning_splits"] = len(spanning)
        out[f"{what}_spanning_examples"] = spanning.slice(0, 10).to_pylist()
    return out


def _previous_splits(lake: Lake, con: Any, spec: SnapshotSpec) -> tuple[str, pa.Table] | None:
    """(version, table of piece_id and split) of the latest version of ``spec.name`` built with the same
    seed and fractions, or None: splits then come from the hash alone."""
    rows = [r for r in list_snapshots(lake) if r["name"] == spec.name]
    if not rows:
        return None
    row = rows[-1]
    m = json.loads(_read(lake, row, "manifest.json"))
    fractions = dict(zip(SPLITS, (float(x) for x in spec.split), strict=True))
    same = m.get("split", {}).get("seed") == spec.seed and m.get("split", {}).get("fractions") == fractions
    if not same:
        return None
    got = con.execute(
        "SELECT DISTINCT piece_id, split FROM snapshot_pieces WHERE name = ? AND version = ?",
        [spec.name, row["version"]],
    ).to_arrow_table()
    return row["version"], got


def license_terms(lic: str | None) -> str:
    """What a licence asks of a user of the data, in a few words."""
    if not lic:
        return "unknown licence: check the source before use"
    u = lic.upper().replace(" ", "-")
    if u in {"PD", "CC0", "CC0-1.0", "PUBLIC-DOMAIN", "UNLICENSE"}:
        return "none (public domain / no conditions)"
    if u.startswith("CC-BY") or u.startswith("CC BY"):
        terms = ["attribution required"]
        if "-NC" in u:
            terms.append("non-commercial use only")
        if "-ND" in u:
            terms.append("no derivatives")
        if "-SA" in u:
            terms.append("share-alike: derivatives under the same licence")
        return "; ".join(terms)
    if u.startswith("MIT") or u.startswith("BSD") or u.startswith("ISC"):
        return "keep the copyright and licence notice"
    if u.startswith("APACHE"):
        return "keep the copyright, licence and NOTICE"
    if "GPL" in u:
        return "copyleft: keep the notice; derivatives under the same licence"
    return "see the licence text"


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("midicorpus", "miditok", "symusic", "numpy", "pyarrow", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _table_versions(lake: Lake) -> tuple[dict[str, int | None], int | None]:
    """Per source table the DuckLake snapshot id that last wrote it, and the lake's newest snapshot id."""
    written = lake.table_versions()
    return {t: written.get(t) for t in SOURCE_TABLES}, lake.current_version()


BUILD_MEMORY_LIMIT = os.environ.get("MIDICORPUS_SNAPSHOT_MEMORY", "1GB")  # DuckDB's, while a snapshot is built
DUCKDB_STREAM_SETTINGS = (
    "threads = 1",
    "allocator_flush_threshold = '4MB'",
    "allocator_bulk_deallocation_flush_threshold = '16MB'",
)
STREAM_BATCH_ROWS = 2048  # token rows (pieces x transpositions) per Arrow batch while writing tokens.npy
STREAM_BATCH_TOKENS = 8_000_000  # and tokens per batch (one longer row makes a batch of its own)


def _batch_bounds(n_tokens: pa.ChunkedArray | pa.Array | None, n_rows: int) -> Iterator[tuple[int, int]]:
    """(first row, row count) of each batch: at most STREAM_BATCH_ROWS rows and, past its first row,
    at most STREAM_BATCH_TOKENS tokens (a batch of long pieces is as heavy as one of short ones)."""
    if n_tokens is None:
        for i in range(0, n_rows, STREAM_BATCH_ROWS):
            yield i, min(STREAM_BATCH_ROWS, n_rows - i)
        return
    sizes = np.asarray(pc.fill_null(n_tokens, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    i = 0
    while i < n_rows:
        ends = np.cumsum(sizes[i : i + STREAM_BATCH_ROWS])
        n = max(1, int(np.searchsorted(ends, STREAM_BATCH_TOKENS, side="right")))
        yield i, n
        i += n


def _pad_tokens(batches: Iterable[pa.Array], pad: Sequence[int]) -> Iterator[pa.Array]:
    """Multi-vocabulary token rows with every token ``len(pad)`` ids wide: a shorter token (MuMIDI's
    Bar, Position and Program rows have no Velocity / Duration ids) is filled on the right with the
    PAD id of each missing slot, so its ids stay in their sub-vocabularies' slots. Batches whose tokens
    all have the width pass unchanged (every other scheme: the same bytes)."""
    width = len(pad)
    fill = np.asarray(pad, dtype=np.int64)
    for batch in batches:
        tokens = batch.flatten()
        sizes = np.diff(np.asarray(tokens.offsets.to_numpy(), dtype=np.int64))
        if (sizes == width).all():
            yield batch
            continue
        if (sizes > width).any():
            raise RuntimeError(f"a multi-vocabulary token holds {int(sizes.max())} ids, more than {width}")
        out = np.tile(fill, (len(sizes), 1))
        ids = np.asarray(tokens.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
        col = np.arange(len(ids), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        out[np.repeat(np.arange(len(sizes)), sizes), col] = ids
        inner = pa.ListArray.from_arrays(
            pa.array(np.arange(0, out.size + 1, width, dtype=np.int32)), pa.array(out.reshape(-1))
        )
        row_offs = np.asarray(batch.offsets.to_numpy(), dtype=np.int64)
        yield pa.ListArray.from_arrays(pa.array((row_offs - row_offs[0]).astype(np.int32)), inner)


def _ids_batches(con: Any, rows: pa.Table, ids_col: str, tok_filter: str, params: list[Any]) -> Iterator[pa.Array]:
    """The ids of ``rows`` (columns piece_id, transpose, run_id, n_tokens; sorted by piece and
    shift), a batch at a time (:func:`_batch_bounds`), in their order: each batch is a join of the tokens on its
    (piece, shift, run) keys, restricted to its piece-id range so DuckDB reads only the row groups
    that can hold it. No sort of the token lists and no window over them: memory is bounded by one
    batch, whatever the split's size."""
    for i, n in _batch_bounds(rows.column("n_tokens") if "n_tokens" in rows.column_names else None, rows.num_rows):
        batch = rows.slice(i, n)
        pids = batch.column("piece_id").cast(pa.string())
        keys = pa.table(
            {
                "piece_id": pids,
                "transpose": batch.column("transpose").cast(pa.int32()),
                "run_id": batch.column("run_id").cast(pa.string()),
                "pos": pa.array(np.arange(batch.num_rows, dtype=np.int64)),
            }
        )
        con.register("snapshot_batch", keys)
        try:
            got = con.execute(
                f"SELECT b.pos, t.{ids_col} AS ids FROM tokens t JOIN snapshot_batch b USING (piece_id, transpose, run_id) "
                f"WHERE {tok_filter} AND t.piece_id BETWEEN ? AND ?",
                [*params, pids[0].as_py(), pids[-1].as_py()],
            ).to_arrow_table()
        finally:
            con.unregister("snapshot_batch")
        if got.num_rows != batch.num_rows:
            raise RuntimeError(f"{got.num_rows} token rows read for {batch.num_rows} chosen rows")
        order = np.argsort(got.column("pos").to_numpy(), kind="stable")
        yield got.column("ids").take(pa.array(order)).combine_chunks()


def _stream_tokens(
    batches: Iterable[pa.Array], path: Path, shape: tuple[int, ...], dtype: np.dtype, scheme: str
) -> dict[str, Any]:
    """Write id lists (one list, or list of lists, per row), batch by batch, as ``tokens.npy`` of
    ``shape``: the same bytes as ``np.save`` of the whole array, with memory bounded by one batch,
    not by the split. Returns the file's sha256 and size."""
    from numpy.lib import format as npf

    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    written = 0
    with open(path, "wb") as fh:
        head = io.BytesIO()
        npf.write_array_header_1_0(head, {"descr": npf.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        fh.write(head.getvalue())
        h.update(head.getvalue())
        for batch in batches:
            flat = batch.flatten()
            if len(shape) == 2:
                flat = flat.flatten()
            arr = np.asarray(flat.to_numpy(zero_copy_only=False))
            if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
                raise RuntimeError(f"token ids of {scheme} out of range for {dtype}")
            blob = arr.astype(dtype).tobytes()
            fh.write(blob)
            h.update(blob)
            written += arr.size
        fh.flush()
        os.fsync(fh.fileno())
    want = int(np.prod(shape))
    if written != want:
        raise RuntimeError(
            f"seq_lengths sum to {shape[0]} tokens, the ids hold {written // max(1, int(np.prod(shape[1:])))}"
        )
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def _counted(batches: Iterable[pa.Array], step: Step, progress: Callable[[Step], None]) -> Iterator[pa.Array]:
    """``batches`` as they are; each one's tokens added to ``step`` once it is written."""
    for batch in batches:
        yield batch
        step.done += len(batch.flatten())  # one entry per token (a list of ids per token when multi-vocab)
        progress(step)


def _no_progress(step: Step) -> None:
    pass


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_npy(path: Path, arr: np.ndarray) -> dict[str, Any]:
    """``np.save`` of ``arr`` into ``path`` (written as it is saved, not copied through memory); its sha256 and size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return {"sha256": _sha256_file(path), "bytes": path.stat().st_size}


def _write_parquet(path: Path, tbl: pa.Table) -> dict[str, Any]:
    """``tbl`` as one zstd Parquet file (the bytes ``pq.write_table`` gives in memory); its sha256 and size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pq.write_table(tbl, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    return {"sha256": _sha256_file(path), "bytes": path.stat().st_size}


def _attribution(path: Path, chosen: pa.Table) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Write ATTRIBUTION.tsv of the pieces ``chosen`` (piece_id, split, sources, licenses, source_uri),
    a batch of pieces at a time; its sha256 and size, the pieces per licence (with its terms and
    sources) and per source."""
    lic_counts: dict[str, dict[str, Any]] = {}
    src_counts: dict[str, int] = {}
    terms_of: dict[str, str] = {}
    attr_path = path
    h = hashlib.sha256()
    with open(attr_path, "wb") as fh:
        head = b"piece_id\tsplit\tsources\tlicenses\tsource_uri\tterms\n"
        fh.write(head)
        h.update(head)
        for batch in chosen.select(["piece_id", "split", "sources", "licenses", "source_uri"]).to_batches(8192):
            lines = []
            for r in batch.to_pylist():  # Python objects for one batch of pieces at a time
                lics = r["licenses"]
                for x in lics:
                    if x not in terms_of:
                        terms_of[x] = license_terms(x)
                lines.append(
                    "\t".join(
                        [
                            r["piece_id"],
                            r["split"],
                            ",".join(r["sources"]),
                            ",".join(lics),
                            r["source_uri"] or "",
                            " | ".join(terms_of[x] for x in lics),
                        ]
                    )
                    + "\n"
                )
                for lic in lics:
                    e = lic_counts.setdefault(
                        lic, {"pieces": 0, "terms": license_terms(None if lic == "unknown" else lic), "sources": set()}
                    )
                    e["pieces"] += 1
                    e["sources"].update(r["sources"])
                for s in r["sources"]:
                    src_counts[s] = src_counts.get(s, 0) + 1
            blob = "".join(lines).encode()
            fh.write(blob)
            h.update(blob)
        fh.flush()
        os.fsync(fh.fileno())
    licenses = {
        k2: {"pieces": v["pieces"], "terms": v["terms"], "sources": sorted(v["sources"])}
        for k2, v in sorted(lic_counts.items())
    }
    return {"sha256": h.hexdigest(), "bytes": attr_path.stat().st_size}, licenses, src_counts


PIECES_FILE = ".pieces.parquet"  # a build's snapshot_pieces rows, for registration; removed before rename


# ----------------------------------------------------------------------------- selection
def _selection_sql(where: str | None, has_mutopia: bool, mix_by: str | None = None) -> str:
    """The selection, one row per piece; with ``mix_by``, its label (``mix_label``: the smallest value
    of the expression over the piece's rows, as text)."""
    label = f"min(CAST(({mix_by}) AS VARCHAR)) AS mix_label, " if mix_by else ""
    mut = "list_distinct(list(mutopia_id) FILTER (WHERE mutopia_id IS NOT NULL))" if has_mutopia else "[]::VARCHAR[]"
    cond = f"({where})" if where else "true"
    return (
        "SELECT piece_id, any_value(dedup_cluster) AS dedup_cluster, any_value(song_group) AS song_group, "
        "list_sort(list_distinct(list(source))) AS sources, "
        "list_sort(list_distinct(list(coalesce(license, 'unknown')))) AS licenses, "
        "min(source_uri) AS source_uri, any_value(size_bytes) AS size_bytes, "
        "list_sort(list_distinct(flatten(list(coalesce(msd_ids, []::VARCHAR[]))))) AS msd_ids, "
        f"{mut} AS mutopia_ids, {label}any_value(key_tonic_pc) AS key_tonic_pc, any_value(key_mode) AS key_mode "
        "FROM (SELECT * FROM features JOIN (SELECT * FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL) USING (piece_id)) "
        f"WHERE {cond} GROUP BY piece_id ORDER BY piece_id"
    )


def _resolve_tokenizer(con: Any, scheme: str, tokenizer_hash: str | None) -> dict[str, Any]:
    if tokenizer_hash:
        row = con.execute(
            "SELECT tokenizer_hash, tokenization, config_json, vocab_size, is_multi_vocab FROM tokenizers "
            "WHERE scheme = ? AND tokenizer_hash = ? LIMIT 1",
            [scheme, tokenizer_hash],
        ).fetchone()
    else:
        row = con.execute(
            "SELECT tokenizer_hash, tokenization, config_json, vocab_size, is_multi_vocab FROM tokenizers "
            "WHERE scheme = ? ORDER BY created_at DESC, tokenizer_hash LIMIT 1",
            [scheme],
        ).fetchone()
    if row is None:
        known = sorted({r[0] for r in con.execute("SELECT scheme FROM tokenizers").fetchall()})
        what = f"tokenizer {tokenizer_hash!r} of scheme {scheme!r}" if tokenizer_hash else f"scheme {scheme!r}"
        raise SnapshotError(
            f"no tokens for {what}; tokenized schemes: {', '.join(known) or 'none'} (run 'midicorpus tokenize --scheme {scheme}')"
        )
    return {
        "hash": row[0],
        "tokenization": row[1],
        "config_json": row[2],
        "vocab_size": int(row[3]),
        "is_multi_vocab": bool(row[4]),
    }


# miditok imports torch (about 200 MB resident): the tokenizer is loaded in a child process, so the
# driver of ``snapshot create`` never holds it. The child prints the special ids and vocabulary sizes.
_TOKENIZER_FACTS_CHILD = """
import json, sys
sys.path[:0] = json.loads(sys.argv[1])
from corpus.tokenize import presets
tok, _ = presets.load_from_text(sys.stdin.read())
specials = {}
if tok.is_multi_voc:
    sizes = [len(v) for v in tok.vocab]
    for name in ("PAD", "BOS", "EOS", "MASK"):
        ids = [v.get(f"{name}_None") for v in tok.vocab]
        if all(i is not None for i in ids):
            specials[name] = [int(i) for i in ids]
else:
    sizes = [len(tok.vocab)]
    for name in ("PAD", "BOS", "EOS", "MASK"):
        i = tok.vocab.get(f"{name}_None")
        if i is not None:
            specials[name] = int(i)
sys.stdout.write(json.dumps({"specials": specials, "sizes": sizes}))
"""


def _tokenizer_facts(config_json: str) -> tuple[str, dict[str, Any], list[int], dict[str, Any] | None]:
    """(miditok tokenizer.json text, special ids, vocab sizes, our transform). The tokenizer is
    built in a child process (:data:`_TOKENIZER_FACTS_CHILD`), not in the driver."""
    import subprocess

    doc = json.loads(config_json)
    transform = doc.pop("midicorpus_transform", None)
    text = json.dumps(doc, indent=2)  # key order kept: miditok builds the vocabulary in dict order
    got = subprocess.run(
        [sys.executable, "-c", _TOKENIZER_FACTS_CHILD, json.dumps([p for p in sys.path if p])],
        input=config_json,
        capture_output=True,
        text=True,
        check=False,
    )
    if got.returncode != 0:
        last = (got.stderr.strip().splitlines() or ["no message"])[-1]
        raise SnapshotError(f"the tokenizer of this snapshot cannot be loaded: {last}")
    facts = json.loads(got.stdout)
    return text, facts["specials"], [int(n) for n in facts["sizes"]], transform


# ----------------------------------------------------------------------------- build
def build(
    lake: Lake, spec: SnapshotSpec, out_dir: Path, progress: Callable[[Step], None] = _no_progress
) -> dict[str, Any]:
    """Write the snapshot's files into ``out_dir`` (must not exist); return the manifest.

    A pure function of the lake's committed tables and ``spec``: the same inputs give the
    same bytes in every file but ``manifest.json`` (which records ``created_at``).
    ``progress`` is told the tokens written of the total, split by split.
    """
    spec.validate()
    done_so_far = Step(what="selecting pieces")
    progress(done_so_far)
    mode, k = transpose_shifts(spec.transpose)
    out_dir.mkdir(parents=True)
    con = lake.connect()
    spill = tempfile.mkdtemp(prefix="midicorpus-snapshot-spill-")
    try:
        # the sort of the token lists spills to disk past this, so the driver's memory does not grow with the corpus
        con.execute(f"SET memory_limit = '{BUILD_MEMORY_LIMIT}'")
        con.execute(f"SET temp_directory = '{spill}'")
        # DuckDB's allocator hands memory freed after a query back to the system in the background: the
        # selection's joins and windows (hundreds of MB at 176k pieces) do not stay resident under the tokens
        con.execute("SET allocator_background_threads = true")
        tokinfo = _resolve_tokenizer(con, spec.scheme, spec.tokenizer_hash)
        cols = {r[0] for r in con.execute("DESCRIBE pieces").fetchall()}
        mix_by = (spec.mix_by or "source") if spec.mix else None
        sel_sql = _selection_sql(spec.where, "mutopia_id" in cols, mix_by)
        try:
            sel = con.sql(sel_sql).to_arrow_table()
        except Exception as exc:  # noqa: BLE001 - duckdb raises many types; a bad --where is user input
            msg = str(exc).strip().splitlines()[0]
            if mix_by and spec.where is None:
                raise SnapshotError(
                    f"--mix-by {mix_by!r} is not a valid expression on features and pieces columns: {msg}"
                ) from None
            what = f"--where {spec.where!r}" + (f" or --mix-by {mix_by!r}" if mix_by else "")
            raise SnapshotError(f"{what} is not a valid condition on features and pieces columns: {msg}") from None
        sel = sel.combine_chunks()
        pids = sel.column("piece_id").combine_chunks().cast(pa.string())
        n_sel = sel.num_rows

        # song groups and splits (before augmentation: per piece, copies follow), as columns
        previous = _previous_splits(lake, con, spec)
        units = _unit_keys(sel)
        split_code, hashed = _split_codes(units, spec.seed, spec.split, pids, previous[1] if previous else None)
        del units
        split_str = _SPLIT_NAMES.take(pa.array(split_code))
        kept_from = previous[0] if previous and not np.array_equal(split_code, hashed) else None
        moved: list[dict[str, Any]] = []
        if previous:  # the pieces of the previous version whose split changed (few)
            prev = previous[1].combine_chunks()
            at = pc.index_in(prev.column("piece_id"), value_set=pids)
            now = split_str.take(at)  # null where the piece is not selected now
            change = pc.and_kleene(pc.is_valid(at), pc.not_equal(now, prev.column("split")))
            ch = pa.table({"piece_id": prev.column("piece_id"), "from": prev.column("split"), "to": now}).filter(
                pc.fill_null(change, False)
            )
            moved = sorted(ch.to_pylist(), key=lambda x: (x["piece_id"], x["from"]))
            del prev, at, now, change, ch
        hashed = None

        # which token rows: per piece, the wanted shifts
        if mode == "normalize":
            from corpus.curation.transpose import normalize_shift

            tonic = sel.column("key_tonic_pc")
            kmode = sel.column("key_mode").cast(pa.string())
            ok = pc.fill_null(
                pc.and_(pc.is_valid(tonic), pc.is_in(kmode, value_set=pa.array(["major", "minor"]))), False
            )
            take = np.flatnonzero(np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool))
            t_np = np.asarray(tonic.take(pa.array(take)).to_numpy(zero_copy_only=False)).astype(np.int64)
            minor = np.asarray(pc.equal(kmode.take(pa.array(take)), "minor").to_numpy(zero_copy_only=False), dtype=bool)
            shift = np.zeros(len(take), dtype=np.int32)
            for tv in np.unique(t_np):  # normalize_shift per distinct key (its own range check included)
                for is_minor in (False, True):
                    m = (t_np == tv) & (minor == is_minor)
                    if m.any():
                        shift[m] = normalize_shift(int(tv), "minor" if is_minor else "major")
            want_idx = take.astype(np.int64)
            want_shift = shift
        else:
            shifts = np.array([0] if mode == "none" else list(range(-k, k + 1)), dtype=np.int32)
            want_idx = np.repeat(np.arange(n_sel, dtype=np.int64), len(shifts))
            want_shift = np.tile(shifts, n_sel)
        wi = pa.array(want_idx)
        want_tbl = pa.table(
            {
                "piece_id": pids.take(wi),
                "transpose": pa.array(want_shift.astype(np.int32)),
                "split": split_str.take(wi),
                "song_group": sel.column("song_group").take(wi).cast(pa.string()),
                "dedup_cluster": sel.column("dedup_cluster").take(wi).cast(pa.string()),
                "source": pc.binary_join(sel.column("sources"), ",").take(wi),
                "license": pc.binary_join(sel.column("licenses"), ",").take(wi),
                "size_bytes": sel.column("size_bytes").take(wi).cast(pa.int64()),
                **({"mix_label": sel.column("mix_label").take(wi).cast(pa.string())} if mix_by else {}),
            }
        )
        del wi, want_idx, want_shift
        con.register("snapshot_wanted", want_tbl)
        tok_filter = "t.scheme = ? AND t.tokenizer_hash = ?"
        params = [spec.scheme, tokinfo["hash"]]
        rows_tbl = con.sql(
            "SELECT w.split, t.piece_id, t.transpose, t.seq_lengths, t.n_tokens, t.run_id, w.song_group, w.dedup_cluster, "
            "w.source, w.license, w.size_bytes"
            + (", t.bar_starts" if spec.segment else "")
            + (", w.mix_label" if mix_by else "")
            + f" FROM tokens t JOIN snapshot_wanted w USING (piece_id, transpose) WHERE {tok_filter} "
            "QUALIFY row_number() OVER (PARTITION BY t.piece_id, t.transpose ORDER BY t.run_id) = 1 "
            "ORDER BY t.piece_id, t.transpose",
            params=params,
        ).to_arrow_table()
        con.unregister("snapshot_wanted")
        if spec.segment:
            no_bars = rows_tbl.filter(pc.is_null(rows_tbl.column("bar_starts")))
            if no_bars.num_rows:
                raise SnapshotError(_no_bars_line(spec.scheme, tokinfo, no_bars.num_rows, rows_tbl.num_rows))
        mix_info = _mix_plan(rows_tbl, spec.mix, mix_by) if mix_by else None
        done_so_far.what = "choosing token rows"
        progress(done_so_far)
        tok_text, specials, vocab_sizes, transform = _tokenizer_facts(tokinfo["config_json"])
        multi = tokinfo["is_multi_vocab"]
        dtype = np.dtype(np.uint16) if max(vocab_sizes) <= 65535 else np.dtype(np.int32)

        # the wanted rows with no tokens (not tokenized or rejected): their number, the first 100
        missing_tbl = want_tbl.select(["piece_id", "transpose"]).join(
            rows_tbl.select(["piece_id", "transpose"]), keys=["piece_id", "transpose"], join_type="left anti"
        )
        n_missing = missing_tbl.num_rows
        missing = missing_tbl.sort_by([("piece_id", "ascending"), ("transpose", "ascending")]).slice(0, 100).to_pylist()
        tokenize_rejects = _tokenize_rejects(con, missing_tbl, spec.scheme, tokinfo["hash"])
        del missing_tbl, want_tbl
        in_snapshot = np.asarray(
            pc.is_in(pids, value_set=rows_tbl.column("piece_id").combine_chunks()).to_numpy(zero_copy_only=False),
            dtype=bool,
        )

        # attribution, licences and leakage of the pieces in the snapshot, before the tokens, so that the
        # selection is not held while they are written
        files: dict[str, dict[str, Any]] = {}
        chosen = pa.table(
            {
                "piece_id": pids,
                "split": split_str,
                "sources": sel.column("sources"),
                "licenses": sel.column("licenses"),
                "source_uri": sel.column("source_uri"),
                "song_group": sel.column("song_group").cast(pa.string()),
                "dedup_cluster": sel.column("dedup_cluster").cast(pa.string()),
            }
        ).filter(pa.array(in_snapshot))
        done_so_far.what = "writing the attribution"
        progress(done_so_far)
        files["ATTRIBUTION.tsv"], licenses, src_counts = _attribution(
            out_dir / "ATTRIBUTION.tsv", chosen.select(["piece_id", "split", "sources", "licenses", "source_uri"])
        )
        leakage = _leakage(chosen.select(["split", "song_group", "dedup_cluster"]))
        n_in_snapshot = chosen.num_rows
        del chosen, sel, pids, split_str, in_snapshot
        # each split's rows (only the columns the shards need), and not the whole table beside them
        keep = [c for c in rows_tbl.column_names if c != "split"]
        by_split = {sp: rows_tbl.filter(pc.equal(rows_tbl.column("split"), sp)).select(keep) for sp in SPLITS}
        del rows_tbl
        # a statement after the last one that read registered Arrow tables: without it the selection's
        # tables (107 MB at 176k pieces) stayed referenced through the tokens in about half the runs
        con.execute("SELECT 1").fetchall()

        # the ids are read batch by batch: one DuckDB thread reads one row group of the token files at a
        # time (two threads hold two), and DuckDB's allocator hands freed memory back soon
        for setting in DUCKDB_STREAM_SETTINGS:
            con.execute(f"SET {setting}")

        split_counts: dict[str, dict[str, int]] = {}
        segment_counts: dict[str, int] = {}
        snap_pieces: list[pa.Table] = []
        ids_col = "ids_multi" if multi else "ids"
        done_so_far.total = sum(
            int(pc.sum(pc.list_flatten(t.column("seq_lengths"))).as_py() or 0) for t in by_split.values()
        )
        if spec.segment and spec.segment[1] < spec.segment[0]:
            done_so_far.total = None  # overlapping windows write some tokens more than once: no total known
        for sp in SPLITS:
            done_so_far.what = f"writing {sp}"
            progress(done_so_far)
            # the rows chosen (first run per piece and shift), each column one array; their ids are read
            # batch by batch (_ids_batches)
            rows = by_split.pop(sp)
            rows = pa.Table.from_arrays([c.combine_chunks() for c in rows.columns], names=rows.column_names)
            snap_pieces.append(
                pa.table(
                    {
                        "piece_id": rows.column("piece_id").cast(pa.string()),
                        "split": pa.array([sp] * rows.num_rows, pa.string()),
                        "transpose": rows.column("transpose").cast(pa.int32()),
                        "n_tokens": rows.column("n_tokens").cast(pa.int64()),
                    }
                )
            )
            # sequences: per row by seq_lengths, cut at max_seq_len; or bar-aligned segments. As numbers:
            # their strings are taken from their rows one Parquet row group at a time (_hf_meta), and for
            # sequences.parquet once the tokens are written (_seq_table)
            src = None
            if spec.segment:
                seqs, offsets, pos, src, seg_counts = _segments(
                    rows, *spec.segment, spec.max_seq_len, blocks=tokinfo["tokenization"] == "MMM"
                )
                for k2, v in seg_counts.items():
                    segment_counts[k2] = segment_counts.get(k2, 0) + v
            else:
                seqs, offsets, pos = _sequences(rows, spec.max_seq_len)
            shape = (pos, len(vocab_sizes)) if multi else (pos,)
            # the Hugging Face file of the split, written from the same batches as tokens.npy
            midi_sizes = None
            if spec.with_midi:
                sizes = pc.fill_null(rows.column("size_bytes"), 0).take(seqs.column("row"))
                midi_sizes = np.asarray(sizes.to_numpy(zero_copy_only=False), dtype=np.int64)
            hf_out = hf.HFWriter(
                out_dir / sp / hf.HF_FILE,
                np.asarray(seqs.column("start").to_numpy(), dtype=np.int64),
                np.asarray(seqs.column("length").to_numpy(), dtype=np.int64),
                _hf_meta(seqs, rows),
                len(vocab_sizes) if multi else None,
                lake.get_raws if spec.with_midi else None,
                midi_sizes=midi_sizes,
                segment=spec.segment is not None,
            )
            try:
                batches = _ids_batches(
                    con, rows.select(["piece_id", "transpose", "run_id", "n_tokens"]), ids_col, tok_filter, params
                )
                if multi:  # MuMIDI's tokens are not all as wide as its vocabularies: PAD fills them
                    batches = _pad_tokens(batches, specials.get("PAD") or [0] * len(vocab_sizes))
                if src is not None:
                    batches = _gather(batches, src)
                files[f"{sp}/tokens.npy"] = _stream_tokens(
                    hf_out.tee(_counted(batches, done_so_far, progress)),
                    out_dir / sp / "tokens.npy",
                    shape,
                    dtype,
                    spec.scheme,
                )
                files[f"{sp}/{hf.HF_FILE}"] = hf_out.close()
            finally:
                hf_out.abort()
            del hf_out, batches, src
            files[f"{sp}/index.npy"] = _write_npy(out_dir / sp / "index.npy", offsets)
            seq_tbl = _seq_table(seqs, rows, mix_by is not None)
            del seqs
            files[f"{sp}/sequences.parquet"] = _write_parquet(out_dir / sp / "sequences.parquet", seq_tbl)
            split_counts[sp] = {
                "pieces": int(pc.count_distinct(rows.column("piece_id")).as_py()),
                "rows": rows.num_rows,
                "sequences": len(offsets) - 1,
                "tokens": int(pos),
            }
            del rows, seq_tbl, offsets
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)

    # tokenizer, attribution
    done_so_far.what = "writing the card"
    progress(done_so_far)
    _write(out_dir / "tokenizer.json", tok_text.encode())
    files["tokenizer.json"] = {"sha256": hashlib.sha256(tok_text.encode()).hexdigest(), "bytes": len(tok_text.encode())}
    recipe = {
        "format": FORMAT,
        "selection": {
            "where": spec.where,
            "sql": sel_sql,
            "transpose": spec.transpose,
            "max_seq_len": spec.max_seq_len,
            "with_midi": spec.with_midi,
            # only when used: a recipe without them keeps the version and bytes it had before they existed
            **({"segment": {"bars": spec.segment[0], "hop": spec.segment[1]}} if spec.segment else {}),
            **({"mix": {"by": mix_by, "weights": dict(spec.mix or ())}} if mix_by else {}),
        },
        "scheme": spec.scheme,
        "tokenizer_hash": tokinfo["hash"],
        "split": {"fractions": dict(zip(SPLITS, spec.split, strict=True)), "seed": spec.seed},
        "files": {k2: v["sha256"] for k2, v in sorted(files.items())},
    }
    version = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    table_versions, lake_version = _table_versions(lake)
    counts: dict[str, Any] = {
        "pieces": n_in_snapshot,
        "rows": sum(c["rows"] for c in split_counts.values()),
        "sequences": sum(c["sequences"] for c in split_counts.values()),
        "tokens": sum(c["tokens"] for c in split_counts.values()),
        "selected_pieces": n_sel,
        "missing_token_rows": n_missing,
        **split_counts,
    }
    manifest = {
        "format": FORMAT,
        "name": spec.name,
        "version": version,
        "created_at": now_utc().isoformat(),
        "source_tables": table_versions,
        "lake_version": lake_version,  # the DuckLake snapshot it was built from: sql --at NAME@VERSION
        "selection": recipe["selection"],
        "scheme": spec.scheme,
        "tokenizer": {
            "file": "tokenizer.json",
            "hash": tokinfo["hash"],
            "tokenization": tokinfo["tokenization"],
            "is_multi_vocab": multi,
            "vocab_size": tokinfo["vocab_size"],
            "vocab_sizes": vocab_sizes,
            "special_ids": specials,
            "transform": transform,
            "config": json.loads(tok_text).get("config"),
        },
        "split": {
            "policy": "per song group (features.song_group, rule song-v1, joined with MSD and Mutopia ids; union-find), "
            "assigned before augmentation: a group with pieces in the previous version of this name (same seed and "
            "fractions) keeps the split most of them had; any other group: u = int(sha256(f'{seed}\\0{group_key}')[:8]) "
            "/ 2**64; train if u < f_train, valid if u < f_train + f_valid, else test",
            "fractions": recipe["split"]["fractions"],
            "seed": spec.seed,
            "kept_from_version": kept_from,
            "previous_version": previous[0] if previous else None,
            "moved": moved,
        },
        "leakage": leakage,
        "library_versions": _library_versions(),
        "shard_format": {**SHARD_FORMAT, "dtype": dtype.name, "n_vocabularies": len(vocab_sizes) if multi else 1},
        "files": dict(sorted(files.items())),
        "hf": {
            "splits": list(SPLITS),
            "files": {sp: f"{sp}/{hf.HF_FILE}" for sp in SPLITS},
            "with_midi": spec.with_midi,
            "load": "datasets.load_dataset('<snapshot dir>') (README.md front matter)",
        },
        "counts": counts,
        "sources": dict(sorted(src_counts.items())),
        "licenses": licenses,
        "missing_token_rows": [f"{x['piece_id']}@{x['transpose']}" for x in missing],
        "tokenize_rejects": tokenize_rejects,
    }
    if spec.segment:
        manifest["segments"] = {
            "bars": spec.segment[0],
            "hop": spec.segment[1],
            "max_seq_len": spec.max_seq_len,
            "policy": "per token row and track, windows of `bars` bars every `hop` bars from bar 0 (the last one "
            "the first that reaches the end), from the tokens table's bar_starts (corpus.tokenize.bars); a window "
            "longer than max_seq_len is cut at bar lines, a bar longer than max_seq_len at the token count "
            "(long_bars_cut); windows without tokens are dropped (empty_segments); a segment stays in its piece's split"
            + (MMM_SEGMENT_POLICY if tokinfo["tokenization"] == "MMM" else ""),
            **segment_counts,
        }
    if mix_info:
        manifest["mix"] = mix_info
    card = render_card(manifest).encode()
    _write(out_dir / "README.md", card)
    _write(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
    # for registration (the snapshot_pieces rows); removed before rename
    pq.write_table(pa.concat_tables(snap_pieces), out_dir / PIECES_FILE)
    return manifest


def _tokenize_rejects(con: Any, missing_tbl: Any, scheme: str, tokenizer_hash: str) -> dict[str, Any]:
    """Why the wanted rows without tokens have none: the tokenize stage's rejects for this
    scheme and tokenizer, counted per reason, the first 100 with their detail, and what the
    scheme loses by design (``presets.Preset.loses``)."""
    from corpus.tokenize import presets

    con.register("snapshot_missing", missing_tbl)
    try:
        join = (
            "FROM snapshot_missing m JOIN rejects r ON r.piece_id = m.piece_id AND r.stage = 'tokenize' "
            "AND r.scheme = ? AND r.tokenizer_hash = ? AND (r.transpose = m.transpose OR r.transpose IS NULL)"
        )
        params = [scheme, tokenizer_hash]
        by_reason = con.execute(
            f"SELECT r.reason, count(*) {join} GROUP BY r.reason ORDER BY 2 DESC, 1", params
        ).fetchall()
        first = con.execute(
            f"SELECT m.piece_id, m.transpose, r.reason, r.detail {join} ORDER BY 1, 2, 3 LIMIT 100", params
        ).fetchall()
    finally:
        con.unregister("snapshot_missing")
    preset = presets.PRESETS.get(scheme)
    return {
        "by_reason": {reason: int(n) for reason, n in by_reason},
        "pieces": [{"piece_id": p, "transpose": t, "reason": r, "detail": d} for p, t, r, d in first],
        "by_design": preset.loses if preset else "",
    }


def _rejects_section(m: Mapping[str, Any]) -> list[str]:
    """The card's account of selected pieces the scheme could not take, and why."""
    rej = m.get("tokenize_rejects") or {}
    by_reason = rej.get("by_reason") or {}
    lines: list[str] = []
    if rej.get("by_design"):
        lines += ["", "## What this scheme loses", "", f"`{m['scheme']}`: {rej['by_design']}"]
    if by_reason:
        if not rej.get("by_design"):
            lines += ["", "## What this scheme loses"]
        total = sum(by_reason.values())
        lines += [
            "",
            f"{total} selected rows (piece x transposition) were rejected by the tokenize stage for this tokenizer "
            "(`rejects`, stage `tokenize`): " + ", ".join(f"{reason} {n}" for reason, n in by_reason.items()) + ".",
            "",
            "| piece | transpose | reason | detail |",
            "|---|---:|---|---|",
        ]
        lines += [
            f"| {x['piece_id']} | {x['transpose']} | {x['reason']} | {str(x['detail']).replace('|', '/')} |"
            for x in rej["pieces"]
        ]
        if total > len(rej["pieces"]):
            lines.append(f"| ... {total - len(rej['pieces'])} more (query `rejects`) | | | |")
    return lines


def render_card(m: Mapping[str, Any]) -> str:
    """The README-style card of a snapshot (deterministic: no timestamps)."""
    c = m["counts"]
    t = m["tokenizer"]
    sel = m["selection"]
    lines = [
        *([hf.front_matter(m)] if "hf" in m else []),
        f"# Snapshot {m['name']}@{m['version']}",
        "",
        f"{c['pieces']} pieces, {c['sequences']} sequences, {c['tokens']:,} tokens of scheme `{m['scheme']}` "
        f"(miditok {t['tokenization']}, tokenizer {t['hash']}, vocabulary {t['vocab_size']}"
        f"{', multi-vocabulary ' + str(t['vocab_sizes']) if t['is_multi_vocab'] else ''}).",
        "",
        "| split | pieces | rows (piece x transposition) | sequences | tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in SPLITS:
        x = c.get(s, {})
        lines.append(
            f"| {s} | {x.get('pieces', 0)} | {x.get('rows', 0)} | {x.get('sequences', 0)} | {x.get('tokens', 0):,} |"
        )
    leak = m.get("leakage")
    if leak:
        lines += ["", f"Leakage check (counted from `sequences.parquet`): {leakage_line(leak)}."]
    moved = m["split"].get("moved") or []
    if m["split"].get("kept_from_version"):
        lines += [
            "",
            f"Splits kept from version {m['split']['kept_from_version']}: a song group keeps the split most of "
            "its pieces had there.",
        ]
    if moved:
        lines += [
            "",
            f"{len(moved)} pieces moved since version {m['split']['previous_version']} "
            "(a new piece joined song groups that were in different splits):",
        ]
        lines += [f"- {x['piece_id']}: {x['from']} -> {x['to']}" for x in moved[:50]]
        if len(moved) > 50:
            lines.append(f"- ... and {len(moved) - 50} more (manifest.json `split.moved`)")
    lines += _rejects_section(m)
    lines += ["", "## Sources", "", "| source | pieces |", "|---|---:|"]
    lines += [f"| {s} | {n} |" for s, n in m["sources"].items()]
    lines += [
        "",
        "## Licences and what they require",
        "",
        "| licence | pieces | sources | terms |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {lic} | {v['pieces']} | {', '.join(v['sources'])} | {v['terms']} |" for lic, v in m["licenses"].items()
    ]
    lines += [
        "",
        "Attribution: `ATTRIBUTION.tsv` lists every piece with its sources, licences and source URI; credit them as "
        'their licences require (for the Lakh MIDI Dataset: Colin Raffel, "Learning-Based Methods for Comparing '
        'Sequences, with Applications to Audio-to-MIDI Alignment and Matching", 2016; for Mutopia pieces: the '
        "typesetter and the Mutopia Project).",
        "",
        "## How it was made",
        "",
        f"- selection: `{sel['where'] or 'all curated pieces'}` over `features JOIN pieces` (status ok); "
        f"{c['selected_pieces']} pieces selected, {c['missing_token_rows']} wanted token rows missing (not tokenized or rejected)",
        f"- transposition: `{sel['transpose']}`; max_seq_len: {sel['max_seq_len'] or 'none (whole sequences)'}",
        *_segment_lines(m),
        *_mix_lines(m),
        f"- splits: {', '.join(f'{k} {v}' for k, v in m['split']['fractions'].items())}, seed {m['split']['seed']}; {m['split']['policy']}",
        f"- library versions: {', '.join(f'{k} {v}' for k, v in m['library_versions'].items())}",
        "- shards: "
        + m["shard_format"]["layout"]
        + f"; dtype {m['shard_format']['dtype']}; see manifest.json `shard_format`",
        "",
        "Read without midicorpus:",
        "",
        "```python",
        "import numpy as np, pyarrow.parquet as pq",
        "tok = np.load('train/tokens.npy', mmap_mode='r'); idx = np.load('train/index.npy')",
        "seq0 = tok[idx[0]:idx[1]]; meta = pq.read_table('train/sequences.parquet')",
        "```",
        "",
    ]
    if "hf" in m:
        lines += hf.card_section(m)
    return "\n".join(lines)


def _segment_lines(m: Mapping[str, Any]) -> list[str]:
    seg = m.get("segments")
    if not seg:
        return []
    mmm = m.get("tokenizer", {}).get("tokenization") == "MMM"
    return [
        f"- segments: {seg['bars']} bars every {seg['hop']} bars (`--segment bars:{seg['bars']}:{seg['hop']}`): "
        f"{seg['segments']:,} windows over {seg['bars_total']:,} bars, "
        f"{seg['empty_segments']:,} empty windows dropped, {seg['long_bars_cut']:,} bars longer than max_seq_len "
        "cut at the token count; columns segment_start_bar, segment_end_bar (sequences.parquet) and segment (Hugging Face)"
        + (MMM_SEGMENT_POLICY if mmm else ""),
    ]


def _mix_lines(m: Mapping[str, Any]) -> list[str]:
    mix = m.get("mix")
    if not mix:
        return []
    per = "; ".join(
        f"{k} {v['weight']:g} ({v['pieces']} pieces, {v['tokens']:,} tokens, x{v['repeats_per_epoch']:g} per epoch)"
        for k, v in mix["labels"].items()
    )
    return [f"- mixture of the train split by `{mix['by']}` (valid and test are not re-weighted): {per}"]


# ----------------------------------------------------------------------------- create / read
def snapshots_dir(lake: Lake) -> Path:
    return lake.root / "snapshots"


def version_rel(name: str, version: str) -> str:
    """A version's folder, relative to the lake root."""
    return f"snapshots/{name}/{version}"


def create(lake: Lake, spec: SnapshotSpec, progress: Callable[[Step], None] = _no_progress) -> SnapshotResult:
    """Build the snapshot, put it in place, register it (lake locked by the caller).

    A local lake gets the build renamed into place; an object-store lake gets it uploaded,
    ``manifest.json`` last (see the module docstring). ``path`` of the result is the local
    folder, or the version's URL on an object store. ``progress`` follows the build
    (tokens written of the total) and the steps after it.
    """
    spec.validate()
    if lake.remote:
        return _create_remote(lake, spec, progress)
    base = snapshots_dir(lake)
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(".build-*"):  # a killed build; we hold the lock, so nobody else is building
        shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f".build-{uuid.uuid4().hex[:12]}"
    try:
        manifest = build(lake, spec, tmp, progress)
        version = manifest["version"]
        pieces = pq.read_table(tmp / PIECES_FILE)
        (tmp / PIECES_FILE).unlink()
        target = base / spec.name / version
        progress(Step(manifest["counts"]["tokens"], manifest["counts"]["tokens"], "putting the version in place"))
        created = False
        if not (target / "manifest.json").exists():
            for p in tmp.rglob("*"):
                if p.is_dir():
                    _fsync_dir(p)
            _fsync_dir(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            created = True
        else:
            manifest = json.loads((target / "manifest.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(Step(manifest["counts"]["tokens"], manifest["counts"]["tokens"], "registering in the lake"))
    _register(lake, manifest, pieces)
    return SnapshotResult(spec.name, version, target, created, manifest)


def _create_remote(lake: Lake, spec: SnapshotSpec, progress: Callable[[Step], None]) -> SnapshotResult:
    """Build locally, upload the files, then the manifest (the commit point)."""
    _drop_partial_uploads(lake)  # a killed upload; we hold the lock, so nobody else is uploading
    with tempfile.TemporaryDirectory(prefix="midicorpus-snapshot-") as tmpdir:
        tmp = Path(tmpdir) / "build"
        manifest = build(lake, spec, tmp, progress)
        tokens = manifest["counts"]["tokens"]
        version = manifest["version"]
        pieces = pq.read_table(tmp / PIECES_FILE)
        (tmp / PIECES_FILE).unlink()
        rel = version_rel(spec.name, version)
        created = False
        if lake.file_exists(f"{rel}/manifest.json"):
            manifest = json.loads(lake.read_bytes(f"{rel}/manifest.json"))
        else:
            manifest_bytes = (tmp / "manifest.json").read_bytes()
            (tmp / "manifest.json").unlink()
            lake.remove(rel)  # what an interrupted upload of this very version left
            progress(Step(tokens, tokens, "uploading"))
            lake.upload_dir(tmp, rel)
            lake.write_bytes(f"{rel}/manifest.json", manifest_bytes)
            created = True
    progress(Step(tokens, tokens, "registering in the lake"))
    _register(lake, manifest, pieces)
    return SnapshotResult(spec.name, version, lake.uri(rel), created, manifest)


def _drop_partial_uploads(lake: Lake) -> None:
    """Remove version folders without a manifest (uploads that never reached their commit point)."""
    files: dict[str, set[str]] = {}
    for f in lake.list_files("snapshots"):
        parts = f.split("/")
        if len(parts) >= 4:
            files.setdefault("/".join(parts[:3]), set()).add("/".join(parts[3:]))
    for rel, names in sorted(files.items()):
        if "manifest.json" not in names:
            lake.remove(rel)


def _register(lake: Lake, manifest: Mapping[str, Any], pieces: pa.Table) -> None:
    name, version = manifest["name"], manifest["version"]
    con = lake.connect()
    try:
        known = con.execute("SELECT 1 FROM snapshots WHERE name = ? AND version = ?", [name, version]).fetchone()
    finally:
        con.close()
    if known:
        return
    msha = hashlib.sha256(lake.read_bytes(f"{version_rel(name, version)}/manifest.json")).hexdigest()
    with lake.transaction({"command": "snapshot create", "name": name, "version": version}) as tx:
        tx.write(
            "snapshots",
            [
                {
                    "name": name,
                    "version": version,
                    "created_at": now_utc(),
                    "n_pieces": manifest["counts"]["pieces"],
                    "n_tokens": manifest["counts"]["tokens"],
                    "manifest_sha256": msha,
                    "scheme": manifest["scheme"],
                    "tokenizer_hash": manifest["tokenizer"]["hash"],
                    "path": version_rel(name, version),
                }
            ],
        )
        n = pieces.num_rows
        tx.write(
            "snapshot_pieces",
            pa.table(
                {
                    "name": pa.repeat(pa.scalar(name, pa.string()), n),
                    "version": pa.repeat(pa.scalar(version, pa.string()), n),
                    **{c: pieces.column(c) for c in ("piece_id", "split", "transpose", "n_tokens")},
                }
            ),
        )


def _list_row(m: Mapping[str, Any], path: str) -> dict[str, Any]:
    return {
        "name": m["name"],
        "version": m["version"],
        "created_at": m["created_at"],
        "scheme": m["scheme"],
        "pieces": m["counts"]["pieces"],
        "tokens": m["counts"]["tokens"],
        "path": path,
    }


def list_snapshots(lake: Lake) -> list[dict[str, Any]]:
    """Every snapshot version with a manifest, oldest first per name: name, version, created_at,
    counts, path (a local folder, or a URL on an object store)."""
    out = []
    if lake.remote:
        for f in lake.list_files("snapshots"):
            parts = f.split("/")
            if len(parts) != 4 or parts[3] != "manifest.json" or parts[1].startswith(".") or parts[2].startswith("."):
                continue
            out.append(_list_row(json.loads(lake.read_bytes(f)), lake.uri(version_rel(parts[1], parts[2]))))
        out.sort(key=lambda r: (r["name"], r["created_at"], r["version"]))
        return out
    base = snapshots_dir(lake)
    if not base.is_dir():
        return out
    for mf in base.glob("*/*/manifest.json"):
        if mf.parent.parent.name.startswith("."):
            continue
        out.append(_list_row(json.loads(mf.read_text()), str(mf.parent)))
    out.sort(key=lambda r: (r["name"], r["created_at"], r["version"]))
    return out


def _find(lake: Lake, ref: str) -> dict[str, Any]:
    """The :func:`list_snapshots` row of ``NAME[@VERSION]``."""
    name, _, version = ref.partition("@")
    if not NAME_RE.match(name):
        raise SnapshotError(f"snapshot {ref!r}: expected NAME or NAME@VERSION")
    rows = list_snapshots(lake)
    versions = [r for r in rows if r["name"] == name]
    if not versions:
        known = sorted({r["name"] for r in rows})
        raise SnapshotError(f"no snapshot named {name!r}; known: {', '.join(known) or 'none'}")
    if not version:
        return versions[-1]
    hits = [r for r in versions if r["version"].startswith(version)]
    if len(hits) != 1:
        raise SnapshotError(
            f"snapshot {ref!r}: {'no' if not hits else 'more than one'} version matches; versions: {', '.join(r['version'] for r in versions)}"
        )
    return hits[0]


def resolve(lake: Lake, ref: str) -> Path | str:
    """``NAME`` (latest version) or ``NAME@VERSION`` (a unique prefix is enough) to its directory.

    On an object-store lake: the version's URL (a str; :func:`local_snapshot` gives a local copy).
    """
    row = _find(lake, ref)
    return str(row["path"]) if lake.remote else Path(row["path"])


def lake_version_of(lake: Lake, ref: str) -> int:
    """The lake version (DuckLake snapshot id) the dataset snapshot ``NAME[@VERSION]`` was built from."""
    row = _find(lake, ref)
    manifest = json.loads(_read(lake, row, "manifest.json"))
    if manifest.get("lake_version") is None:
        raise SnapshotError(f"snapshot {ref!r} was built before lake versions were recorded (no lake_version)")
    return int(manifest["lake_version"])


def maintain_lake(lake: Lake, keep_days: float) -> dict[str, Any]:
    """``lake maintain`` (lock held by the caller): compact, expire versions older than ``keep_days``
    except the ones dataset snapshots were built from (``sql --at NAME`` keeps working), delete
    files no version reads. Returns the lake's counts plus ``kept_for_snapshots``."""
    keep: set[int] = set()
    for row in list_snapshots(lake):
        with contextlib.suppress(SnapshotError):
            keep.add(lake_version_of(lake, f"{row['name']}@{row['version']}"))
    res = lake.maintain(keep_days=keep_days, keep_versions=sorted(keep))
    return {**res, "kept_for_snapshots": len(keep)}


def maintain_line(res: Mapping[str, Any], seconds: float) -> str:
    return (
        f"lake maintain: data files {res['files_before']:,} -> {res['files_after']:,}, versions "
        f"{res['snapshots_before']:,} -> {res['snapshots_after']:,} ({res['expired']:,} expired; "
        f"{res['kept_for_snapshots']} kept for dataset snapshots) in {seconds:.1f} s"
    )


def load_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())  # type: ignore[no-any-return]


def _row_rel(lake: Lake, row: Mapping[str, Any]) -> str:
    """The lake-relative folder of a :func:`list_snapshots` row of an object-store lake."""
    return str(row["path"])[len(lake.location) + 1 :]


def _read(lake: Lake, row: Mapping[str, Any], rel: str) -> bytes:
    """A file of the version a :func:`list_snapshots` row names."""
    if lake.remote:
        return lake.read_bytes(f"{_row_rel(lake, row)}/{rel}")
    return (Path(row["path"]) / rel).read_bytes()


def show(lake: Lake, ref: str) -> str:
    """The card of ``NAME[@VERSION]``, without the YAML front matter that ``datasets`` reads."""
    return hf.strip_front_matter(_read(lake, _find(lake, ref), "README.md").decode())


@dataclass
class VerifyResult:
    ref: str
    files: int
    problems: list[str]
    song_groups: int | None = None  # groups the leakage check counted (None: a version without song groups)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        if self.ok:
            leak = (
                f"; 0 of {self.song_groups} song groups span two splits"
                if self.song_groups is not None
                else "; no song groups recorded (made before song groups): leakage not checked"
            )
            return f"{self.ref}: {self.files} files verified, all sha256 match the manifest{leak}"
        return f"{self.ref}: {len(self.problems)} problem(s): " + "; ".join(self.problems)


def _check_file(p: Path, rel: str, meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the file ``p`` (``rel`` in the manifest), or None."""
    if not p.is_file():
        return f"{rel} is missing"
    size = p.stat().st_size
    if size != meta["bytes"]:
        return f"{rel} has {size} bytes, manifest says {meta['bytes']}"
    if _sha256_file(p) != meta["sha256"]:
        return f"{rel} sha256 differs from the manifest"
    return None


def _groups_of(parquet: Path) -> list[tuple[str, str]]:
    """(song_group, piece_id) of a split's ``sequences.parquet`` (empty for versions made before song groups)."""
    tbl = pq.read_table(parquet)
    if "song_group" not in tbl.column_names:
        return []
    return list(zip(tbl.column("song_group").to_pylist(), tbl.column("piece_id").to_pylist()))


def _leak_problem(groups: Mapping[str, list[tuple[str, str]]]) -> tuple[str | None, int | None]:
    """(a problem when any song group has sequences in two splits, the groups counted), from the shards themselves."""
    seen: dict[str, set[str]] = {}
    for sp, rows in groups.items():
        for g, _ in rows:
            seen.setdefault(g, set()).add(sp)
    if not seen:
        return None, None
    spanning = sorted(g for g, sps in seen.items() if len(sps) > 1)
    if not spanning:
        return None, len(seen)
    return f"{len(spanning)} song groups span two splits (e.g. {', '.join(spanning[:3])}): the splits leak", len(seen)


def verify_dir(path: Path) -> VerifyResult:
    """Re-hash every file the manifest lists; report missing, resized and altered files, and leakage:
    a song group with sequences in two splits."""
    path = Path(path)
    m = load_manifest(path)
    problems = [x for rel, meta in sorted(m["files"].items()) if (x := _check_file(path / rel, rel, meta))]
    n_groups = None
    if not problems:
        leak, n_groups = _leak_problem({sp: _groups_of(path / sp / "sequences.parquet") for sp in SPLITS})
        if leak:
            problems.append(leak)
    return VerifyResult(f"{m['name']}@{m['version']}", len(m["files"]), problems, n_groups)


def verify(lake: Lake, ref: str) -> VerifyResult:
    if not lake.remote:
        return verify_dir(Path(resolve(lake, ref)))
    row = _find(lake, ref)
    rel = _row_rel(lake, row)
    m = json.loads(lake.read_bytes(f"{rel}/manifest.json"))
    present = set(lake.list_files(rel))
    problems = []
    groups: dict[str, list[tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="midicorpus-verify-") as tmpdir:
        local = Path(tmpdir) / "file"
        for f, meta in sorted(m["files"].items()):  # one file at a time: the disk holds one shard at most
            if f"{rel}/{f}" in present:
                lake.download(f"{rel}/{f}", local)
            problem = _check_file(local, f, meta)
            if problem:
                problems.append(problem)
            elif f.endswith("/sequences.parquet"):
                groups[f.split("/")[0]] = _groups_of(local)
            local.unlink(missing_ok=True)
    n_groups = None
    if not problems:
        leak, n_groups = _leak_problem(groups)
        if leak:
            problems.append(leak)
    return VerifyResult(f"{m['name']}@{m['version']}", len(m["files"]), problems, n_groups)


# ----------------------------------------------------------------------------- local copies
def cache_dir() -> Path:
    """Where :func:`local_snapshot` keeps copies: ``$MIDICORPUS_CACHE``, else
    ``$XDG_CACHE_HOME/midicorpus``, else ``~/.cache/midicorpus``."""
    env = os.environ.get("MIDICORPUS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "midicorpus"


def _complete_copy(path: Path, version: str) -> bool:
    """A copy that :func:`local_snapshot` finished (cheap checks: its manifest, every file's size)."""
    try:
        m = load_manifest(path)
        return m.get("version") == version and all(
            (path / rel).stat().st_size == meta["bytes"] for rel, meta in m["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _drop_dead_downloads(parent: Path) -> None:
    """Temp folders of downloads on this host whose process is gone (killed mid-download)."""
    host = socket.gethostname()
    for d in parent.glob(".*.download-*"):
        h, _, pid = d.name.rpartition("-")
        if not h.endswith(f".download-{host}"):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (PermissionError, ValueError, OverflowError):
            pass


def local_snapshot(lake: Lake, ref: str) -> Path:
    """A local folder holding ``NAME[@VERSION]`` of ``lake``, for readers that memory-map the shards.

    A local lake: the version's own folder. An object-store lake: a copy in the cache
    (:func:`cache_dir`), downloaded into a temp folder beside it, checked file by file against
    the manifest's sha256 and renamed into place; a complete copy is reused without a download
    (for ``NAME@VERSION`` with the whole version, without even asking the lake).
    """
    if not lake.remote:
        return Path(resolve(lake, ref))
    name, _, given = ref.partition("@")
    if NAME_RE.match(name) and given and not given.startswith(".") and "/" not in given:
        cached = cache_dir() / "snapshots" / name / given
        if _complete_copy(cached, given):
            return cached
    row = _find(lake, ref)
    name, version = row["name"], row["version"]
    dst = cache_dir() / "snapshots" / name / version
    if _complete_copy(dst, version):
        return dst
    parent = dst.parent
    tmp = parent / f".{version}.download-{socket.gethostname()}-{os.getpid()}"
    try:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _drop_dead_downloads(parent)
            shutil.rmtree(tmp, ignore_errors=True)
            lake.download(_row_rel(lake, row), tmp)
        except FileNotFoundError:
            raise SnapshotError(
                f"snapshot {name}@{version} vanished from {lake.location!r} while it was downloaded"
            ) from None
        except OSError as exc:
            raise SnapshotError(
                f"cannot write the local copy of {name}@{version} in {str(parent)!r}: {exc.strerror or exc} "
                "(set MIDICORPUS_CACHE to a folder with room)"
            ) from None
        res = verify_dir(tmp)
        if res.ref != f"{name}@{version}":
            res.problems.insert(0, f"its manifest names {res.ref}")
        if not res.ok:
            raise SnapshotError(
                f"the download of {name}@{version} from {lake.location!r} does not match its manifest "
                f"({'; '.join(res.problems[:3])}{'; ...' if len(res.problems) > 3 else ''}); nothing was cached: "
                f"the snapshot in the lake is damaged, see 'midicorpus snapshot verify {name}@{version}'"
            )
        try:
            if dst.exists():  # an incomplete copy (checked above); a complete one of another process is kept
                if _complete_copy(dst, version):
                    return dst
                shutil.rmtree(dst)
            os.rename(tmp, dst)
        except OSError:
            if _complete_copy(dst, version):  # another process renamed its copy first
                return dst
            raise
        _fsync_dir(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def local_snapshot_url(location: str | os.PathLike[str]) -> Path:
    """A snapshot folder as it is, or a version's URL (``s3://bucket/lake/snapshots/NAME/VERSION``,
    as :func:`resolve` and :func:`create` give on an object store) as a local copy."""
    from corpus import objectstore

    if not objectstore.is_url(location):
        return Path(location)
    url = str(location).rstrip("/")
    base, sep, tail = url.rpartition("/snapshots/")
    parts = tail.split("/")
    if not sep or len(parts) != 2 or not NAME_RE.match(parts[0]):
        raise SnapshotError(f"{url!r} is not a snapshot version URL (expected <lake URL>/snapshots/NAME/VERSION)")
    return local_snapshot(Lake(base), f"{parts[0]}@{parts[1]}")


def _rows(lake: Lake, row: Mapping[str, Any]) -> dict[tuple[str, int], tuple[str, int]]:
    """(piece_id, transpose) -> (split, tokens) from a snapshot's sequences files."""
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for sp in SPLITS:
        try:
            data = _read(lake, row, f"{sp}/sequences.parquet")
        except FileNotFoundError:
            continue
        t = pq.read_table(pa.BufferReader(data), columns=["piece_id", "transpose", "length"]).to_pydict()
        for pid, tr, ln in zip(t["piece_id"], t["transpose"], t["length"], strict=True):
            _, n = out.get((pid, tr), (sp, 0))
            out[(pid, tr)] = (sp, n + ln)
    return out


def diff(lake: Lake, a: str, b: str) -> dict[str, Any]:
    """What changed from snapshot ``a`` to ``b``: pieces and tokens added and removed, split moves."""
    row_a, row_b = _find(lake, a), _find(lake, b)
    ra, rb = _rows(lake, row_a), _rows(lake, row_b)
    added = sorted(set(rb) - set(ra))
    removed = sorted(set(ra) - set(rb))
    moved = sorted(k for k in set(ra) & set(rb) if ra[k][0] != rb[k][0])
    changed = sorted(k for k in set(ra) & set(rb) if ra[k][1] != rb[k][1])
    pieces_a = {p for p, _ in ra}
    pieces_b = {p for p, _ in rb}
    ma, mb = json.loads(_read(lake, row_a, "manifest.json")), json.loads(_read(lake, row_b, "manifest.json"))
    return {
        "a": f"{ma['name']}@{ma['version']}",
        "b": f"{mb['name']}@{mb['version']}",
        "pieces_added": sorted(pieces_b - pieces_a),
        "pieces_removed": sorted(pieces_a - pieces_b),
        "rows_added": [f"{p}@{t}" for p, t in added],
        "rows_removed": [f"{p}@{t}" for p, t in removed],
        "tokens_added": sum(rb[k][1] for k in added),
        "tokens_removed": sum(ra[k][1] for k in removed),
        "rows_changed_tokens": [f"{p}@{t}" for p, t in changed],
        "rows_moved_split": [f"{p}@{t}: {ra[(p, t)][0]} -> {rb[(p, t)][0]}" for p, t in moved],
        "tokenizer_changed": ma["tokenizer"]["hash"] != mb["tokenizer"]["hash"],
        "tokens": {"a": ma["counts"]["tokens"], "b": mb["counts"]["tokens"]},
    }


def diff_text(d: Mapping[str, Any]) -> str:
    lines = [
        f"{d['a']} -> {d['b']}: {len(d['pieces_added'])} pieces added, {len(d['pieces_removed'])} removed; "
        f"{d['tokens_added']:,} tokens added, {d['tokens_removed']:,} removed ({d['tokens']['a']:,} -> {d['tokens']['b']:,})"
        + ("; tokenizer changed" if d["tokenizer_changed"] else "")
    ]
    for key in ("pieces_added", "pieces_removed", "rows_changed_tokens", "rows_moved_split"):
        for x in d[key][:20]:
            lines.append(f"  {key.replace('_', ' ')}: {x}")
        if len(d[key]) > 20:
            lines.append(f"  ... {len(d[key]) - 20} more {key.replace('_', ' ')}")
    return "\n".join(lines)
