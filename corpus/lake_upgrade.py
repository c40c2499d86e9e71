"""``midicorpus lake upgrade``: move a lake of the hand-written table layer into DuckLake.

The old layout kept each table as Parquet files under ``tables/`` listed by commit records in
``_log/`` (a committed transaction interrupted before its files were moved still had them in
``_staging/<txid>/``). The upgrade reads exactly the committed files of every table and inserts
them into the DuckLake tables in one transaction, streamed by DuckDB. The old layout stays the
truth until the new catalog is in place:

- local: the catalog is written as ``catalog.upgrading.sqlite`` and renamed to ``catalog.sqlite``
  once committed (the switch); then ``tables/``, ``_log/``, ``_staging/`` and ``catalog.duckdb``
  move to ``_before_ducklake/`` (delete it once you trust the upgrade). A kill before the
  rename leaves the old lake as it was; the next upgrade starts over.
- object store: the tables go to the PostgreSQL catalog given with ``--catalog``; the switch is
  ``_lake.json`` (format 2), written last. A re-run after a kill between the commit and that
  write finds the committed upgrade and only writes ``_lake.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from corpus.lake import Lake, LakeError, _q, catalog_public
from schemas import PARTITIONS, TABLES


def old_table_files(lake: Lake) -> dict[str, list[str]]:
    """Committed files per table of the old layout, as paths (URLs) DuckDB reads, in commit order."""
    names = sorted(n for n in lake.list_files("_log") if n.endswith(".json"))
    files: dict[str, list[str]] = {}
    for n in names:
        rec = json.loads(lake.read_bytes(n))
        for table, rels in rec["files"].items():
            for r in rels:
                uri = lake.uri(r)
                if not lake.remote and not os.path.exists(uri):
                    staged = lake.root / "_staging" / rec["txid"] / r
                    if staged.exists():
                        uri = str(staged)
                files.setdefault(table, []).append(uri)
    return files


def upgrade(location: str, catalog: str | None = None) -> dict[str, Any]:
    """Upgrade the lake at ``location``; returns rows per table. LakeError when there is nothing to upgrade."""
    probe = Lake(location, catalog=catalog)
    if not probe._old_layout():
        if probe.exists():
            raise LakeError(f"lake {probe.location!r} is already in DuckLake; nothing to upgrade")
        raise LakeError(f"no lake at {probe.location!r}")
    lake = Lake(location, catalog=catalog)
    lake._upgrading = True
    if lake.remote:
        if not lake._catalog_arg:
            raise LakeError("upgrading a lake on an object store needs --catalog postgres://USER@HOST:PORT/DB")
    else:
        lake._catalog_file = "catalog.upgrading.sqlite"
        for leftover in (lake.catalog_path, lake.root / "data"):  # an upgrade killed before its switch
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    files = old_table_files(lake)
    rows: dict[str, int] = {}
    with lake.lock("lake upgrade"):
        done = [c for c in lake.commits() if c["meta"].get("command") == "lake upgrade"]
        if done:  # committed by an upgrade killed before its switch
            rows = done[-1]["tables"]
        else:
            with lake.transaction({"command": "lake upgrade", "from": "tables/ + _log/"}) as tx:
                con = lake._writer
                if lake.remote:
                    lake._duck_attach(con)
                for table in TABLES:
                    got = files.get(table)
                    if not got:
                        continue
                    hive = (
                        ", hive_partitioning = true, hive_types_autocast = false"
                        if PARTITIONS[table]
                        else ", hive_partitioning = false"
                    )
                    flist = ", ".join(_q(f) for f in got)
                    rows[table] = tx.write_select(
                        table, f"SELECT * FROM read_parquet([{flist}], union_by_name = true{hive})"
                    )
    if lake.remote:
        body = {"format": 2, "catalog": catalog_public(lake.catalog), "upgraded_from": "tables/ + _log/"}
        lake.write_bytes("_lake.json", json.dumps(body).encode())
        return {"rows": rows, "kept": None}
    os.replace(lake.catalog_path, lake.root / "catalog.sqlite")  # the switch
    keep = lake.root / "_before_ducklake"
    keep.mkdir(exist_ok=True)
    for name in ("tables", "_log", "_staging", "catalog.duckdb"):
        src = lake.root / name
        if src.exists():
            os.replace(src, keep / name)
    (lake.root / "_staging").mkdir(exist_ok=True)
    return {"rows": rows, "kept": str(keep)}


def _main_line(result: dict[str, Any], location: str) -> str:
    n = sum(result["rows"].values())
    parts = ", ".join(f"{t} {c:,}" for t, c in sorted(result["rows"].items()))
    kept = f"; the old files are in {result['kept']} (delete it once you trust the upgrade)" if result["kept"] else ""
    return f"lake upgrade: {Path(location)} now in DuckLake, {n:,} rows ({parts}){kept}"
