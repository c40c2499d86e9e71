"""The ingest step: store bytes once, record provenance, parse new bytes in the engine.

Every input ends as exactly one of: ok, rejected (including bytes already rejected before,
seen again under another name: still rejected, with the same reason), duplicate (bytes of an
ok piece already in the lake or earlier in this run, recorded as another provenance of the
same piece; ``pieces.is_duplicate`` marks every such later provenance, ok or rejected), or
unchanged (this very item, same source, uri and bytes, was ingested before: nothing is
written). Rows are committed every ``commit_pieces`` pieces or every ``commit_seconds``
seconds, whichever comes first, so a killed run loses at most about that much work (a slow
source such as the music21 conversion commits by time), and running it again does exactly
the missing part.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corpus.engine import Engine
from corpus.lake import Lake, new_txid, now_utc
from corpus.reasons import STAGE_PARSE, STAGE_SOURCE
from corpus.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, shared_parser
from corpus.sources.base import SourceItem


@dataclass
class IngestConfig:
    policy: str = "lenient"  # lenient | strict (see corpus.parse)
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    batch_files: int = 16  # files per Dask task
    batch_bytes: int = 4 << 20  # or this many bytes per task
    batch_seconds: float = 5.0  # or what a slow source gave in this long (music21 converts ~1 work/s)
    commit_pieces: int = 1000  # pieces per transaction
    commit_seconds: float = 30.0  # or a transaction this often, so a kill loses at most this much work
    parser_target: str = "corpus.parse:analyse"


@dataclass
class IngestSummary:
    inputs: int = 0
    ok: int = 0
    rejected: int = 0
    duplicate: int = 0
    unchanged: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    commits: int = 0

    def line(self) -> str:
        s = f"{self.inputs} inputs = {self.ok} ok + {self.rejected} rejected + {self.duplicate} duplicate"
        if self.unchanged:
            s += f" + {self.unchanged} unchanged (already in the lake)"
        return s

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "ok": self.ok,
            "rejected": self.rejected,
            "duplicate": self.duplicate,
            "unchanged": self.unchanged,
            "reasons": dict(sorted(self.reasons.items())),
            "seconds": round(self.seconds, 3),
        }


def parse_batch(
    batch: list[tuple[str, bytes]], target: str, timeout_s: float, memory_mb: int, policy: str
) -> list[tuple[str, tuple[Any, ...]]]:
    """Dask task: parse each file in the worker's sandboxed parser child."""
    parser = shared_parser(target, timeout_s, memory_mb, policy=policy)
    return [(sha, parser.run(data)) for sha, data in batch]


class _Writer:
    """Buffers rows and commits them in transactions."""

    def __init__(self, lake: Lake, run_id: str, meta: dict[str, Any], summary: IngestSummary) -> None:
        self.lake = lake
        self.run_id = run_id
        self.meta = meta
        self.summary = summary
        self.rows: dict[str, list[dict[str, Any]]] = {"pieces": [], "rejects": [], "tracks": [], "piece_facts": []}
        self.pieces_since_commit = 0
        self.last_commit = time.monotonic()

    def due(self, cfg: IngestConfig) -> bool:
        """Time for a transaction: enough pieces, or pieces waiting longer than ``commit_seconds``."""
        if not self.pieces_since_commit:
            return False
        return (
            self.pieces_since_commit >= cfg.commit_pieces or time.monotonic() - self.last_commit >= cfg.commit_seconds
        )

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append(row)
        if table == "pieces":
            self.pieces_since_commit += 1

    def commit(self) -> None:
        if not any(self.rows.values()):
            return
        with self.lake.transaction(self.meta) as tx:
            by_source: dict[str, list[dict[str, Any]]] = {}
            for row in self.rows["pieces"]:
                by_source.setdefault(row["source"], []).append(row)
            for source, rows in sorted(by_source.items()):
                tx.write("pieces", rows, {"source": source})
            by_stage: dict[str, list[dict[str, Any]]] = {}
            for row in self.rows["rejects"]:
                by_stage.setdefault(row["stage"], []).append(row)
            for stage, rows in sorted(by_stage.items()):
                tx.write("rejects", rows, {"stage": stage})
            tx.write("piece_facts", self.rows["piece_facts"])
            tx.write("tracks", self.rows["tracks"])
        self.summary.commits += 1
        self.rows = {k: [] for k in self.rows}
        self.pieces_since_commit = 0
        self.last_commit = time.monotonic()


def known_state(lake: Lake) -> tuple[set[tuple[str, str, str]], dict[str, tuple[str, str | None]]]:
    """Items already ingested, and the outcome of every stored piece."""
    items: set[tuple[str, str, str]] = set()
    status: dict[str, tuple[str, str | None]] = {}
    if not lake.exists():
        return items, status
    con = lake.connect()
    try:
        for source, uri, pid in con.execute("SELECT source, source_uri, coalesce(piece_id, '') FROM pieces").fetchall():
            items.add((source, uri, pid))
        for pid, st, reason in con.execute(
            "SELECT piece_id, any_value(status), any_value(reason) FROM pieces WHERE piece_id IS NOT NULL GROUP BY piece_id"
        ).fetchall():
            status[pid] = (st, reason)
    finally:
        con.close()
    return items, status


def ingest(
    lake: Lake,
    items: Iterable[SourceItem],
    engine: Engine,
    config: IngestConfig | None = None,
    progress: Callable[[IngestSummary], None] | None = None,
    command: str = "ingest",
) -> IngestSummary:
    """Ingest ``items`` into ``lake`` (which the caller holds locked)."""
    cfg = config or IngestConfig()
    t0 = time.perf_counter()
    summary = IngestSummary()
    run_id = new_txid()
    writer = _Writer(lake, run_id, {"command": command, "run_id": run_id, "policy": cfg.policy}, summary)
    seen, status = known_state(lake)
    waiting: dict[str, list[SourceItem]] = {}  # sha -> items with these bytes, first one is the original

    def provenance(
        item: SourceItem, sha: str | None, data: bytes | None, st: str, reason: str | None, dup: bool
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "piece_id": sha,
            "source": item.source,
            "source_uri": item.uri,
            "name": item.name,
            "license": item.license,
            "size_bytes": len(data) if data is not None else None,
            "md5": hashlib.md5(data).hexdigest() if data is not None else None,
            "ingested_at": now_utc(),
            "status": st,
            "is_duplicate": dup,
            "reason": reason,
            "run_id": run_id,
        }
        row.update(item.meta)
        return row

    def count(st: str, reason: str | None, dup: bool) -> None:
        summary.inputs += 1
        if dup and st == "ok":
            summary.duplicate += 1
        elif st == "ok":
            summary.ok += 1
        else:
            summary.rejected += 1
            summary.reasons[reason or "?"] += 1

    def finish(sha: str, outcome: tuple[Any, ...]) -> None:
        items_ = waiting.pop(sha)
        first = items_[0]
        if outcome[0] == "ok":
            st, reason = "ok", None
            result = outcome[1]
            writer.add("piece_facts", {"piece_id": sha, **result["facts"]})
            for tr in result["tracks"]:
                writer.add("tracks", {"piece_id": sha, **tr})
        else:
            st, reason, detail = "rejected", outcome[1], outcome[2]
            writer.add(
                "rejects",
                {
                    "piece_id": sha,
                    "stage": STAGE_PARSE,
                    "reason": reason,
                    "detail": detail,
                    "source_uri": first.uri,
                    "created_at": now_utc(),
                    "run_id": run_id,
                },
            )
        status[sha] = (st, reason)
        for k, it in enumerate(items_):
            data = it.data
            writer.add("pieces", provenance(it, sha, data, st, reason, dup=k > 0))
            count(st, reason, dup=k > 0)

    def batches() -> Iterator[list[tuple[str, bytes]]]:
        batch: list[tuple[str, bytes]] = []
        size = 0
        started = time.monotonic()
        for item in items:
            key_uri = (item.source, item.uri)
            if item.data is None:
                assert item.reject is not None
                if (*key_uri, "") in seen:
                    summary.inputs += 1
                    summary.unchanged += 1
                    continue
                reason, detail = item.reject
                writer.add("pieces", provenance(item, None, None, "rejected", reason, dup=False))
                writer.add(
                    "rejects",
                    {
                        "piece_id": None,
                        "stage": STAGE_SOURCE,
                        "reason": reason,
                        "detail": detail,
                        "source_uri": item.uri,
                        "created_at": now_utc(),
                        "run_id": run_id,
                    },
                )
                count("rejected", reason, dup=False)
                seen.add((*key_uri, ""))
                continue
            sha = hashlib.sha256(item.data).hexdigest()
            key = (*key_uri, sha)
            if key in seen:
                summary.inputs += 1
                summary.unchanged += 1
                continue
            seen.add(key)
            if sha in status:
                st, reason = status[sha]
                writer.add("pieces", provenance(item, sha, item.data, st, reason, dup=True))
                count(st, reason, dup=True)
            elif sha in waiting:
                waiting[sha].append(item)
            else:
                lake.put_raw(item.data, sha)
                waiting[sha] = [item]
                if not batch:
                    started = time.monotonic()
                batch.append((sha, item.data))
                size += len(item.data)
                if (
                    len(batch) >= cfg.batch_files
                    or size >= cfg.batch_bytes
                    or time.monotonic() - started >= cfg.batch_seconds
                ):
                    yield batch
                    batch, size = [], 0
            if writer.due(cfg):
                writer.commit()
        if batch:
            yield batch

    for _batch, results in engine.map_unordered(
        parse_batch, batches(), cfg.parser_target, cfg.timeout_s, cfg.memory_mb, cfg.policy
    ):
        for sha, outcome in results:
            finish(sha, outcome)
        if writer.due(cfg):
            writer.commit()
        if progress:
            progress(summary)
    writer.commit()
    if progress:
        progress(summary)
    summary.seconds = time.perf_counter() - t0
    return summary
