"""LPD through the ingest step: conversion in the engine's workers, rejects, lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.lpd import LpdSource


def _tree(tmp_path: Path, data_dir: Path) -> Path:
    root = tmp_path / "lpd_17" / "lpd_17_cleansed"
    for src in (data_dir / "lpd").rglob("*.npz"):
        dst = root / src.relative_to(data_dir / "lpd")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    real = next((data_dir / "lpd").rglob("TRAAAGR128F425B14B/*.npz"))
    (root / "broken.npz").write_bytes(real.read_bytes()[:2000])  # a truncated download
    return tmp_path / "lpd_17"


def test_engine_conversion_equals_in_process(tmp_path: Path, data_dir: Path) -> None:
    tree = _tree(tmp_path, data_dir)
    plain = {(i.uri, i.data, i.reject) for i in LpdSource(tree)}
    lake = Lake(tmp_path / "lake")
    with lake.lock(), Engine(workers=2) as e:
        viaengine = {(i.uri, i.data, i.reject) for i in LpdSource(tree, engine=e, batch=1)}
        assert viaengine == plain
        s = ingest(lake, LpdSource(tree, engine=e), e, IngestConfig())
    assert (s.inputs, s.ok, s.rejected) == (3, 2, 1)
    rows = (
        lake.connect()
        .execute("SELECT name, status, reason, lpd_variant, lpd_subset, lmd_md5 IS NOT NULL FROM pieces ORDER BY name")
        .fetchall()
    )
    assert rows[0] == ("b97c529ab9ef783a849b896816001748.npz", "ok", None, "lpd_17", "cleansed", True)
    assert rows[1][:3] == ("broken.npz", "rejected", "npz_corrupt")
    (stage,) = lake.connect().execute("SELECT stage FROM rejects").fetchone()
    assert stage == "source"
