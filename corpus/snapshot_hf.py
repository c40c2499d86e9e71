"""A snapshot's Hugging Face ``datasets`` files: one Parquet file per split and the card's YAML.

``datasets.load_dataset("<snapshot dir>")`` reads the card's front matter (``configs`` with the
``data_files`` of each split) and gives a ``DatasetDict`` of train, valid and test with one row per
sequence, the rows of ``sequences.parquet`` in the same order, the ids of ``tokens.npy`` inline:
``input_ids`` (a list of ids; a list of per-token id lists for multi-vocabulary schemes),
``piece_id``, ``song_group``, ``dedup_cluster``, ``source``, ``license``, ``transpose``, ``track``,
``chunk``, ``seq`` and, with ``snapshot create --with-midi``, ``midi`` (the piece's original bytes).

The files are written while ``tokens.npy`` is streamed (:class:`HFWriter` sees each batch of token
rows once), so memory stays bounded by one batch and one row group. Row groups are cut from the
sequence lengths alone (at most :data:`ROW_GROUP_ROWS` sequences, :data:`ROW_GROUP_TOKENS` tokens and,
with MIDI, :data:`ROW_GROUP_MIDI_BYTES` by the pieces' ``size_bytes``), never from the read batches, and the writer settings are fixed, so the same recipe gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HF_FILE = "data-00000-of-00001.parquet"  # per split folder; the card's data_files glob is ``<split>/data-*.parquet``
ROW_GROUP_ROWS = 1024  # sequences per Parquet row group at most
ROW_GROUP_TOKENS = 1_000_000  # and tokens per row group (one longer sequence makes a group of its own)
ROW_GROUP_MIDI_BYTES = 64 << 20  # and MIDI bytes (a piece's bytes once per sequence of it)

HF_FORMAT = (
    "<split>/data-00000-of-00001.parquet: Parquet (zstd) for Hugging Face datasets, one row per sequence in "
    "sequences.parquet order: input_ids (list<int32>; list<list<int32>> per token for multi-vocabulary schemes), "
    "piece_id, song_group, dedup_cluster, source and license (a piece's sources and licences, comma-joined), "
    "transpose, track, chunk, seq (the row of sequences.parquet and index.npy), and midi (the piece's original "
    "bytes) when made with --with-midi; the card's YAML front matter lists the files per split"
)

# licence names the Hub knows, in its spelling (lowercase); anything else is listed as "other"
_HUB_LICENSES = {
    "apache-2.0",
    "mit",
    "cc0-1.0",
    "unlicense",
    "bsd-2-clause",
    "bsd-3-clause",
    "isc",
    "gpl-2.0",
    "gpl-3.0",
    "lgpl-3.0",
    "agpl-3.0",
    "mpl-2.0",
    "cc-by-2.0",
    "cc-by-2.5",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
}


SEGMENT_TYPE = pa.struct([("start_bar", pa.int32()), ("end_bar", pa.int32())])  # bars [start_bar, end_bar)


def hf_schema(multi: bool, with_midi: bool, segment: bool = False) -> pa.Schema:
    ids = pa.list_(pa.list_(pa.int32())) if multi else pa.list_(pa.int32())
    fields = [
        pa.field("input_ids", ids),
        pa.field("piece_id", pa.string()),
        pa.field("song_group", pa.string()),
        pa.field("dedup_cluster", pa.string()),
        pa.field("source", pa.string()),
        pa.field("license", pa.string()),
        pa.field("transpose", pa.int32()),
        pa.field("track", pa.int32()),
        pa.field("chunk", pa.int32()),
        pa.field("seq", pa.int64()),
    ]
    if segment:  # snapshot create --segment
        fields.append(pa.field("segment", SEGMENT_TYPE))
    if with_midi:
        fields.append(pa.field("midi", pa.binary()))
    return pa.schema(fields)


def row_groups(lengths: np.ndarray, midi_bytes: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(first sequence, end) of each row group: at most ROW_GROUP_ROWS sequences and, past its
    first one, at most ROW_GROUP_TOKENS tokens and ROW_GROUP_MIDI_BYTES of ``midi_bytes`` (per
    sequence, its piece's size). A function of the sequences alone, not of how they were read."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(lengths)
    while i < n:
        ends = np.cumsum(lengths[i : i + ROW_GROUP_ROWS])
        k = max(1, int(np.searchsorted(ends, ROW_GROUP_TOKENS, side="right")))
        if midi_bytes is not None:
            sizes = np.cumsum(midi_bytes[i : i + k])
            k = max(1, int(np.searchsorted(sizes, ROW_GROUP_MIDI_BYTES, side="right")))
        out.append((i, i + k))
        i += k
    return out


def _int32_tokens(batch: pa.Array, width: int | None) -> pa.Array:
    """The tokens of a batch of token rows as int32 (``width`` ids per token for multi-vocabulary)."""
    flat = pc.list_flatten(batch)
    if width is None:
        return flat.cast(pa.int32())
    ids = pc.list_flatten(flat).cast(pa.int32())
    if len(ids) != len(flat) * width:
        raise RuntimeError(f"multi-vocabulary tokens hold {len(ids)} ids, expected {len(flat)} x {width}")
    return pa.ListArray.from_arrays(pa.array(np.arange(0, len(ids) + 1, width, dtype=np.int32)), ids)


class HFWriter:
    """Writes one split's Hugging Face Parquet file from the batches of token rows that fill
    ``tokens.npy`` (:meth:`tee` passes them on unchanged).

    ``starts`` and ``lengths``: each sequence's first token in the split's tokens and its length.
    ``meta(g0, g1)``: the other columns of sequences [g0, g1) (piece_id, song_group, ... as in
    :func:`hf_schema`), asked for one row group at a time, so the split's strings are never held once
    per sequence. ``read_midi``: the raw bytes of piece ids (``Lake.get_raws``), or None for no ``midi``
    column; ``midi_sizes``: then each sequence's piece size, which bounds the row groups.
    """

    def __init__(
        self,
        path: Path,
        starts: np.ndarray,
        lengths: np.ndarray,
        meta: Callable[[int, int], pa.Table],
        width: int | None,
        read_midi: Callable[[Sequence[str]], list[bytes]] | None = None,
        *,
        midi_sizes: np.ndarray | None = None,
        segment: bool = False,
    ) -> None:
        self.path = path
        self.meta = meta
        self.n = len(starts)
        self.width = width
        self.read_midi = read_midi
        self.schema = hf_schema(width is not None, read_midi is not None, segment)
        self.starts = starts
        self.groups = row_groups(lengths, midi_sizes if read_midi else None)
        self.pos = 0  # tokens seen
        self.next_seq = 0  # first sequence not yet in pending
        self.pending: list[pa.Array] = []  # input_ids of sequences [written, next_seq)
        self.written = 0  # sequences written
        self.group = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")  # closed by close() or abort()
        self._writer = pq.ParquetWriter(
            self._fh,
            self.schema,
            compression="zstd",
            compression_level=3,
            use_dictionary=True,
            write_statistics=True,
            version="2.6",
            data_page_version="1.0",
        )

    def tee(self, batches: Iterable[pa.Array]) -> Iterator[pa.Array]:
        for batch in batches:
            self.add(batch)
            yield batch

    def add(self, batch: pa.Array) -> None:
        """One batch of token rows (a list of ids, or of per-token id lists, per row), in order."""
        tokens = _int32_tokens(batch, self.width)
        base, end = self.pos, self.pos + len(tokens)
        lo, hi = self.next_seq, int(np.searchsorted(self.starts, end, side="left"))
        if hi > lo:
            if self.starts[lo] != base:
                raise RuntimeError(f"sequence {lo} starts at token {self.starts[lo]}, the batch at {base}")
            offsets = np.append(self.starts[lo:hi], end) - base
            self.pending.append(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), tokens))
        elif len(tokens):
            raise RuntimeError(f"{len(tokens)} tokens from {base} belong to no sequence")
        self.pos, self.next_seq = end, hi
        self._flush()

    def _flush(self) -> None:
        while self.group < len(self.groups) and self.groups[self.group][1] <= self.next_seq:
            g0, g1 = self.groups[self.group]
            ids = pa.concat_arrays(self.pending) if len(self.pending) > 1 else self.pending[0]
            take, rest = ids.slice(0, g1 - g0), ids.slice(g1 - g0)
            self.pending = [rest] if len(rest) else []
            meta = self.meta(g0, g1)
            cols: dict[str, pa.Array] = {"input_ids": take}
            for name in self.schema.names[1:]:
                if name == "midi":
                    cols[name] = self._midi(meta.column("piece_id").combine_chunks())
                else:
                    cols[name] = meta.column(name).combine_chunks().cast(self.schema.field(name).type)
            tbl = pa.Table.from_arrays([cols[n] for n in self.schema.names], schema=self.schema)
            self._writer.write_table(tbl, row_group_size=tbl.num_rows)
            self.written = g1
            self.group += 1

    def _midi(self, pids: pa.Array) -> pa.Array:
        uniq = pc.unique(pids)
        blobs = self.read_midi(uniq.to_pylist()) if self.read_midi else []
        return pa.array(blobs, pa.binary()).take(pc.index_in(pids, value_set=uniq))

    def close(self) -> dict[str, Any]:
        """Finish the file; its sha256 and size. Every sequence must have been written."""
        if self.written != self.n or self.pending:
            raise RuntimeError(f"{self.written} of {self.n} sequences written to {self.path.name}")
        self._writer.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return {"sha256": h.hexdigest(), "bytes": self.path.stat().st_size}

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()


# ----------------------------------------------------------------------------- card
def hub_licenses(names: Iterable[str]) -> list[str]:
    """The Hub's licence ids of our licence names; "other" for any it does not know."""
    out = set()
    for n in names:
        u = n.strip().lower().replace(" ", "-")
        out.add(u if u in _HUB_LICENSES else "other")
    return sorted(out)


def _y(s: str) -> str:
    """A YAML scalar: JSON's double-quoted string, which YAML reads as the same string."""
    return json.dumps(s)


def front_matter(m: Mapping[str, Any]) -> str:
    """The YAML front matter of the card that ``datasets`` reads (configs with each split's files, licence)."""
    lics = hub_licenses(m["licenses"])
    lines = ["---", f"pretty_name: {_y('midicorpus snapshot ' + m['name'] + '@' + m['version'])}"]
    lines.append("license:")
    lines += [f"- {_y(x)}" for x in lics]
    if "other" in lics:
        lines += [f"license_name: {_y('mixed')}", f"license_link: {_y('ATTRIBUTION.tsv')}"]
    lines += ["tags:", "- music", "- midi", "- symbolic-music", f"- {_y(m['scheme'])}"]
    lines += ["configs:", "- config_name: default", "  data_files:"]
    for sp in m["hf"]["splits"]:
        lines += [f"  - split: {sp}", f"    path: {_y(sp + '/data-*.parquet')}"]
    # no dataset_info: its features' YAML spelling changed between datasets majors (sequence/list) and its
    # splits want num_bytes in datasets' own Arrow accounting; the Parquet schema carries the types
    lines += ["---", ""]
    return "\n".join(lines)


def strip_front_matter(card: str) -> str:
    """``card`` without its leading ``---`` YAML block (and the blank line after it)."""
    if not card.startswith("---\n"):
        return card
    end = card.find("\n---\n", 3)
    return card if end < 0 else card[end + 5 :].lstrip("\n")


def card_section(m: Mapping[str, Any]) -> list[str]:
    """The card's lines on loading the snapshot with ``datasets``."""
    midi = m["hf"]["with_midi"]
    multi = m["tokenizer"]["is_multi_vocab"]
    return [
        "## Load with Hugging Face datasets",
        "",
        "```python",
        "from datasets import load_dataset",
        "ds = load_dataset('path/to/this/folder')  # DatasetDict: train, valid, test",
        "row = ds['train'][0]; row['input_ids'], row['piece_id'], row['license']",
        "# in a bucket: datasets opens local folders only, so name the Parquet files (s3fs; streaming=True reads in place)",
        f"url = 's3://<bucket>/<lake>/snapshots/{m['name']}/{m['version']}'",
        "files = {s: f'{url}/{s}/data-*.parquet' for s in ('train', 'valid', 'test')}",
        "ds = load_dataset('parquet', data_files=files, storage_options={'endpoint_url': ...})",
        "```",
        "",
        "One row per sequence (the order of `sequences.parquet`): `input_ids` "
        + ("(one list of ids per token, one id per vocabulary)" if multi else "(token ids)")
        + ", `piece_id`, `song_group`, `dedup_cluster`, `source`, `license`, `transpose`, `track`, `chunk`, `seq`"
        + (", `midi` (the piece's original MIDI bytes)." if midi else "; no `midi` column (made without --with-midi)."),
        "",
    ]
