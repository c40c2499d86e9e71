"""Torch datasets over snapshot shards (memory-mapped, see ``corpus.snapshot.SHARD_FORMAT``).

- :class:`SequenceDataset`: map-style, item ``i`` is sequence ``i`` of a split.
- :class:`PackedBatches`: iterable; packs ``[BOS] seq [EOS]`` of every sequence, in a
  permutation drawn from ``(seed, epoch)``, into one stream cut into windows of
  ``seq_len`` tokens, and yields ready ``(batch_size, seq_len)`` batches. Window ``w`` is
  computed by random access (offsets + searchsorted), so the set of windows of an epoch is
  fixed before any is read. Windows go to ranks strided (rank r takes windows r, r+W, ...),
  every rank gets the same count (the tail is dropped), then batches go to DataLoader
  workers round-robin in the order the DataLoader reads them, so the batch order is the same
  for 0, 1 or N workers. The position is (epoch, batches consumed): :class:`ResumableLoader`
  counts in the main process and restores it exactly, so training resumes mid-epoch
  without repeating or skipping a batch.

A snapshot made with ``--mix`` (manifest ``mix``) has its train split drawn by the weights: per
epoch, for each label, whole passes over a permutation of its sequences (from ``(seed, epoch)``)
until weight x the split's tokens are drawn, the last pass cut at the sequence nearest the budget;
all drawn sequences are then shuffled together (:meth:`PackedBatches.mix_report` says how many
times each label repeats). Valid and test are never re-weighted.

Multi-vocabulary schemes yield one tensor per vocabulary (a tuple).

Every ``snapshot_dir`` is a local snapshot folder, or the URL of a version on an object-store
lake (``s3://bucket/lake/snapshots/NAME/VERSION``), which is read from a verified local copy
(:func:`corpus.snapshot.local_snapshot`, cached) since the shards are memory-mapped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

Batch = torch.Tensor | tuple[torch.Tensor, ...]


def local_dir(snapshot_dir: str | Path) -> Path:
    """The local folder of a snapshot: a folder as it is, an object-store version URL downloaded
    (once, verified) to the local cache."""
    from corpus.objectstore import is_url

    if is_url(snapshot_dir):
        from corpus.snapshot import local_snapshot_url

        return local_snapshot_url(snapshot_dir)
    return Path(snapshot_dir)


class Shards:
    """One split of a snapshot, memory-mapped: ``tokens`` (N,) or (N, V) and ``index`` offsets."""

    def __init__(self, snapshot_dir: str | Path, split: str = "train") -> None:
        self.dir = local_dir(snapshot_dir)
        self.split = split
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        if split not in self.manifest["counts"]:
            raise ValueError(f"split {split!r} not in snapshot {self.dir}; splits: train, valid, test")
        self.tokens = np.load(self.dir / split / "tokens.npy", mmap_mode="r")
        self.index = np.load(self.dir / split / "index.npy")
        tok = self.manifest["tokenizer"]
        self.multi = bool(tok["is_multi_vocab"])
        self.vocab_sizes: list[int] = list(tok["vocab_sizes"])
        sp = tok.get("special_ids", {})
        self.bos = sp.get("BOS", [1] * len(self.vocab_sizes) if self.multi else 1)
        self.eos = sp.get("EOS", [2] * len(self.vocab_sizes) if self.multi else 2)
        self.pad = sp.get("PAD", [0] * len(self.vocab_sizes) if self.multi else 0)

    @property
    def n_sequences(self) -> int:
        return len(self.index) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.index[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.index)

    def sequence(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.index[i] : self.index[i + 1]])

    def mix(self) -> tuple[dict[str, float], np.ndarray, list[str]] | None:
        """(weights, label code per sequence, label names) when the snapshot was made with ``--mix`` and
        this is the train split; None otherwise."""
        mix = self.manifest.get("mix")
        if not mix or self.split not in mix.get("splits", ["train"]):
            return None
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        labels = pq.read_table(self.dir / self.split / "sequences.parquet", columns=["mix_label"]).column("mix_label")
        names = sorted(mix["weights"])
        codes = np.asarray(
            pc.index_in(pc.fill_null(labels, "NULL"), value_set=pa_array(names)).to_numpy(zero_copy_only=False)
        )
        return dict(mix["weights"]), codes, names


def pa_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def mixed_order(
    lengths: np.ndarray, codes: np.ndarray, weights: list[float], rng: np.random.Generator, shuffle: bool = True
) -> np.ndarray:
    """Sequence indices drawn for one epoch: per label ``k`` (sequences with ``codes == k``), whole
    permutations of its sequences until ``weights[k]`` x the total of ``lengths`` is drawn (the last
    permutation cut at the sequence whose end is nearest the budget), then all shuffled together."""
    total = float(lengths.sum())
    parts: list[np.ndarray] = []
    for k, w in enumerate(weights):
        idx = np.flatnonzero(codes == k)
        if w <= 0 or len(idx) == 0:
            continue
        budget = w * total
        cycle = float(lengths[idx].sum())
        if cycle <= 0:
            continue
        full = int(budget // cycle)
        parts += [rng.permutation(idx) for _ in range(full)]
        rest = budget - full * cycle
        p = rng.permutation(idx)
        ends = np.cumsum(lengths[p])
        n = int(np.searchsorted(ends, rest, side="left"))  # ends[n] >= rest: take n or n + 1
        if n < len(p) and ends[n] - rest < rest - (ends[n - 1] if n else 0.0):
            n += 1
        parts.append(p[:n])
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return rng.permutation(order) if shuffle else order


def _to_tensors(arr: np.ndarray, multi: bool) -> Batch:
    t = torch.from_numpy(arr.astype(np.int64, copy=False))
    if multi:
        return tuple(t[..., v].contiguous() for v in range(t.shape[-1]))
    return t


class SequenceDataset(Dataset):
    """Map-style: item ``i`` is sequence ``i`` of the split (int64; a tuple per vocabulary when multi)."""

    def __init__(self, snapshot_dir: str | Path, split: str = "train") -> None:
        self.snapshot_dir = local_dir(snapshot_dir)
        self.split = split
        self._shards: Shards | None = None

    @property
    def shards(self) -> Shards:
        if self._shards is None:  # opened lazily: each DataLoader worker maps the files itself
            self._shards = Shards(self.snapshot_dir, self.split)
        return self._shards

    def __len__(self) -> int:
        return self.shards.n_sequences

    def __getitem__(self, i: int) -> Batch:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return _to_tensors(self.shards.sequence(i), self.shards.multi)

    def __getstate__(self) -> dict[str, Any]:
        return {"snapshot_dir": self.snapshot_dir, "split": self.split, "_shards": None}


class PackedBatches(IterableDataset):
    """Packed, shuffled, rank- and worker-sharded batches with a resumable position."""

    def __init__(
        self,
        snapshot_dir: str | Path,
        split: str = "train",
        seq_len: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        add_bos_eos: bool = True,
        use_mix: bool = True,
    ) -> None:
        if seq_len < 2 or batch_size < 1:
            raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.snapshot_dir = local_dir(snapshot_dir)
        self.split = split
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.add_bos_eos = add_bos_eos
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed
        self.use_mix = use_mix  # draw the train split by the snapshot's --mix weights (when it has them)
        self._shards: Shards | None = None
        self._layout_cache: tuple[tuple[int], tuple[np.ndarray, np.ndarray]] | None = None

    # -------------------------------------------------------------- plan
    @property
    def shards(self) -> Shards:
        if self._shards is None:
            self._shards = Shards(self.snapshot_dir, self.split)
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_shards"] = None
        d["_layout_cache"] = None
        return d

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order of sequences, stream start of each in that order) for an epoch; with a mixture, the
        order is the epoch's weighted draw (:func:`mixed_order`), sequences repeating as it says."""
        key = (epoch,)
        if self._layout_cache is not None and self._layout_cache[0] == key:
            return self._layout_cache[1]
        n = self.shards.n_sequences
        extra = 2 if self.add_bos_eos else 0
        mix = self.shards.mix() if self.use_mix else None
        if mix is not None:
            weights, codes, names = mix
            rng = np.random.default_rng([self.seed, epoch])
            order = mixed_order(self.shards.lengths() + extra, codes, [weights[x] for x in names], rng, self.shuffle)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        n = len(order)
        lens = self.shards.lengths()[order] + extra
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=starts[1:])
        self._layout_cache = (key, (order, starts))
        return order, starts

    def mix_report(self, epoch: int | None = None) -> dict[str, dict[str, float]] | None:
        """Per label of the mixture, in ``epoch``'s draw: tokens drawn (BOS/EOS included), its share of the
        epoch, the weight, and how many times its sequences repeat (tokens drawn / tokens it has); None
        without a mixture (or on valid / test)."""
        mix = self.shards.mix() if self.use_mix else None
        if mix is None:
            return None
        weights, codes, names = mix
        order, starts = self._layout(self.epoch if epoch is None else epoch)
        extra = 2 if self.add_bos_eos else 0
        lens = self.shards.lengths() + extra
        drawn = np.bincount(codes[order], weights=lens[order], minlength=len(names))
        have = np.bincount(codes[codes >= 0], weights=lens[codes >= 0], minlength=len(names))
        total = float(drawn.sum()) or 1.0
        return {
            x: {
                "weight": float(weights[x]),
                "tokens": int(drawn[k]),
                "share": float(drawn[k]) / total,
                "repeats": float(drawn[k] / have[k]) if have[k] else 0.0,
            }
            for k, x in enumerate(names)
        }

    def n_windows(self, epoch: int | None = None) -> int:
        _, starts = self._layout(self.epoch if epoch is None else epoch)
        return int(starts[-1] // self.seq_len)

    def batches_per_epoch(self) -> int:
        """The same for every rank: windows are divided equally, the tail dropped."""
        return (self.n_windows() // self.world_size) // self.batch_size

    def _window(self, order: np.ndarray, starts: np.ndarray, w: int) -> np.ndarray:
        s = self.shards
        lo, hi = w * self.seq_len, (w + 1) * self.seq_len
        j = int(np.searchsorted(starts, lo, side="right")) - 1
        parts = []
        while lo < hi:
            seq = int(order[j])
            body = s.tokens[s.index[seq] : s.index[seq + 1]]
            if self.add_bos_eos:
                bos = np.asarray(s.bos, dtype=body.dtype).reshape((1,) + body.shape[1:])
                eos = np.asarray(s.eos, dtype=body.dtype).reshape((1,) + body.shape[1:])
                full = np.concatenate([bos, body, eos])
            else:
                full = np.asarray(body)
            a = lo - int(starts[j])
            b = min(len(full), hi - int(starts[j]))
            parts.append(full[a:b])
            lo += b - a
            j += 1
        return np.concatenate(parts)

    def batch(self, epoch: int, b: int) -> Batch:
        """Batch ``b`` of this rank in ``epoch`` (random access; what iteration yields)."""
        order, starts = self._layout(epoch)
        return self._batch(order, starts, b)

    def _batch(self, order: np.ndarray, starts: np.ndarray, b: int) -> Batch:
        rows = []
        for i in range(b * self.batch_size, (b + 1) * self.batch_size):
            rows.append(self._window(order, starts, self.rank + i * self.world_size))
        return _to_tensors(np.stack(rows), self.shards.multi)

    # -------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = self.epoch, self.start_batch
        order, starts = self._layout(epoch)
        total = (int(starts[-1] // self.seq_len) // self.world_size) // self.batch_size
        for b in range(start + wid, total, nw):
            out = self._batch(order, starts, b)
            if info is None:
                self.start_batch = b + 1
            yield out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_batch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        self.epoch = int(state["epoch"])
        self.start_batch = int(state["batch"])


class ResumableLoader:
    """Endless iteration over epochs of :class:`PackedBatches` through a DataLoader.

    The position is counted here, in the main process, one batch at a time as the caller
    receives it; :meth:`state_dict` / :meth:`load_state_dict` save and restore it, and a new
    DataLoader iterator starts at exactly the next batch.
    """

    def __init__(
        self, dataset: PackedBatches, num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 2
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.epoch = dataset.epoch
        self.batch = dataset.start_batch
        self._it: Iterator[Batch] | None = None

    def _loader(self) -> DataLoader:
        self.dataset.epoch, self.dataset.start_batch = self.epoch, self.batch
        kw: dict[str, Any] = {}
        if self.num_workers:
            # forkserver: workers fork from a clean server process, not from this one (which may
            # hold threads of Dask, Prefect or a server, unsafe to fork)
            kw = {
                "prefetch_factor": self.prefetch_factor,
                "persistent_workers": False,
                "multiprocessing_context": "forkserver",
            }
        return DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory, **kw)

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> Batch:
        if self.dataset.batches_per_epoch() == 0:
            raise ValueError(
                f"split {self.dataset.split!r} has fewer tokens than one batch of {self.dataset.batch_size} x {self.dataset.seq_len}"
            )
        while True:
            if self._it is None:
                self._it = iter(self._loader())
            try:
                out = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.batch = 0
                continue
            self.batch += 1
            return tuple(out) if isinstance(out, list) else out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.dataset.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.dataset.load_state_dict(state)
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._it = None


def loader_tokens_per_s(
    snapshot_dir: str | Path,
    workers: tuple[int, ...] = (0, 1, 2),
    pin_memory: bool = True,
    seq_len: int = 1024,
    batch_size: int = 16,
    seconds: float = 3.0,
    split: str = "train",
) -> dict[str, Any]:
    """Tokens per second the packed loader delivers, per worker count (for ``midicorpus bench``)."""
    pin = pin_memory and torch.cuda.is_available()
    out: dict[str, Any] = {
        "seq_len": seq_len,
        "batch_size": batch_size,
        "pin_memory": pin,
        "split": split,
        "workers": {},
    }
    snapshot_dir = local_dir(snapshot_dir)
    for nw in workers:
        ds = PackedBatches(snapshot_dir, split, seq_len=seq_len, batch_size=batch_size, seed=0)
        if ds.batches_per_epoch() == 0:
            raise ValueError(f"split {split!r} of {snapshot_dir} is smaller than one batch of {batch_size} x {seq_len}")
        loader = ResumableLoader(ds, num_workers=nw, pin_memory=pin)
        next(loader)  # worker start-up is not throughput
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            b = next(loader)
            n += (b[0] if isinstance(b, tuple) else b).numel()
        dt = time.perf_counter() - t0
        out["workers"][str(nw)] = {"tokens_per_s": n / dt, "tokens": n, "seconds": dt}
    return out
