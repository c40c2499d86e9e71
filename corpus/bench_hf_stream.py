"""Read throughput of a snapshot's train split through Hugging Face ``datasets`` (no midicorpus code
on the read path), to decide whether a dedicated streaming format is worth adding.

``python -m corpus.bench_hf_stream URL [--repeat N]``: URL is a snapshot version folder, local or
``s3://`` (s3fs settings from the usual ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for MinIO or
moto). Each mode reads the ``input_ids`` of the whole train split; prints one JSON object with rows/s and tokens/s per
mode (the best of ``--repeat`` runs) and the time to the first row when streaming:

- ``stream``: ``load_dataset("parquet", data_files=..., streaming=True)``, row by row;
- ``stream_batched``: the same, ``.iter(batch_size=256)``;
- ``stream_2ranks``: ``.reshard()`` (one shard per row group) and ``split_dataset_by_node`` for
  ranks 0 and 1 of 2, one after the other (the sum of both ranks' rows over the sum of their times);
- ``download``: ``load_dataset`` without streaming (download and Arrow cache, a fresh cache dir),
  then a pass over ``with_format("numpy")``;
- ``npy``: the split's ``tokens.npy`` and ``index.npy`` read whole through fsspec, the sequences
  sliced with numpy (what the midicorpus loader does after its download; the baseline).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

SPLITS = ("train", "valid", "test")


def _files(url: str) -> dict[str, str]:
    return {sp: f"{url}/{sp}/data-*.parquet" for sp in SPLITS}


def _timed(fn: Callable[[], tuple[int, int, float | None]], repeat: int) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows, tokens, first = fn()
        dt = time.perf_counter() - t0
        if best is None or dt < best["seconds"]:
            best = {"seconds": round(dt, 3), "rows": rows, "tokens": tokens}
            best["rows_per_s"] = round(rows / dt)
            best["tokens_per_s"] = round(tokens / dt)
            if first is not None:
                best["first_row_s"] = round(first, 3)
    assert best is not None
    return best


def _count(rows: Any, t0: float) -> tuple[int, int, float | None]:
    n = tokens = 0
    first = None
    for row in rows:
        if first is None:
            first = time.perf_counter() - t0
        n += 1
        tokens += len(row["input_ids"])
    return n, tokens, first


def run(url: str, repeat: int = 3) -> dict[str, Any]:
    import datasets
    import fsspec
    import numpy as np
    from datasets.distributed import split_dataset_by_node

    datasets.disable_progress_bars()
    url = url.rstrip("/")
    with fsspec.open(f"{url}/manifest.json", "rb") as fh:  # a snapshot version folder, or FileNotFoundError
        json.load(fh)

    def stream() -> tuple[int, int, float | None]:
        t0 = time.perf_counter()
        it = datasets.load_dataset("parquet", data_files=_files(url), streaming=True, columns=["input_ids"])["train"]
        return _count(it, t0)

    def stream_batched() -> tuple[int, int, float | None]:
        t0 = time.perf_counter()
        it = datasets.load_dataset("parquet", data_files=_files(url), streaming=True, columns=["input_ids"])["train"]
        n = tokens = 0
        first = None
        for batch in it.iter(batch_size=256):
            first = first if first is not None else time.perf_counter() - t0
            n += len(batch["input_ids"])
            tokens += sum(len(x) for x in batch["input_ids"])
        return n, tokens, first

    def stream_2ranks() -> tuple[int, int, float | None]:
        t0 = time.perf_counter()
        n = tokens = 0
        first = None
        for rank in range(2):
            it = datasets.load_dataset("parquet", data_files=_files(url), streaming=True, columns=["input_ids"])
            r = split_dataset_by_node(it["train"].reshard(), rank=rank, world_size=2, strategy="shards")
            a, b, f = _count(r, t0)
            n, tokens, first = n + a, tokens + b, first if first is not None else f
        return n, tokens, first

    def download() -> tuple[int, int, float | None]:
        with tempfile.TemporaryDirectory(prefix="hfbench-") as cache:
            ds = datasets.load_dataset("parquet", data_files=_files(url), cache_dir=cache, columns=["input_ids"])
            ds = ds["train"]
            n = tokens = 0
            for batch in ds.with_format("numpy").iter(batch_size=256):
                n += len(batch["input_ids"])
                tokens += sum(len(x) for x in batch["input_ids"])
            return n, tokens, None

    def npy() -> tuple[int, int, float | None]:
        with fsspec.open(f"{url}/train/tokens.npy", "rb") as fh:
            tok = np.load(io.BytesIO(fh.read()))
        with fsspec.open(f"{url}/train/index.npy", "rb") as fh:
            idx = np.load(io.BytesIO(fh.read()))
        tokens = sum(len(tok[idx[i] : idx[i + 1]]) for i in range(len(idx) - 1))
        return len(idx) - 1, tokens, None

    modes = {
        "stream": stream,
        "stream_batched": stream_batched,
        "stream_2ranks": stream_2ranks,
        "download": download,
        "npy": npy,
    }
    out: dict[str, Any] = {"url": url, "repeat": repeat, "datasets": datasets.__version__}
    for name, fn in modes.items():
        out[name] = _timed(fn, repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m corpus.bench_hf_stream", description=__doc__.splitlines()[0])
    p.add_argument("url", help="a snapshot version folder: a local path or s3://bucket/lake/snapshots/NAME/VERSION")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode; the fastest is reported (default 3)")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error(f"--repeat must be at least 1, got {a.repeat}")
    try:
        result = run(a.url, a.repeat)
    except (FileNotFoundError, OSError) as exc:
        print(f"bench_hf_stream: error: cannot read the snapshot at {a.url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
