"""Snapshots split by song group: no song in two splits, the leakage check, splits kept across versions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import snapshot as S
from corpus.curate import curate
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource
from corpus.tokenize.stage import tokenize


def _songs(arrangements_dir: Path, lo: int, hi: int, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for d in sorted(arrangements_dir.iterdir()):
        if d.is_dir() and lo <= int(d.name) <= hi:
            shutil.copytree(d, dst / d.name)
    return dst


def _add(lake: Lake, folder: Path) -> None:
    with lake.lock("test"), Engine(workers=2) as e:
        ingest(lake, DirSource(folder, name="pop909"), e, IngestConfig())
        curate(lake, e)
        tokenize(lake, e, ["remi"])


def _create(lake: Lake, spec: S.SnapshotSpec) -> S.SnapshotResult:
    with lake.lock():
        return S.create(lake, spec)


def _song(uri: str) -> str:
    m = re.search(r"(\d{3})/(?:versions/)?\d{3}(?:-v\d+)?\.mid$", uri)
    assert m, uri
    return {"018": "017", "103": "101"}.get(m.group(1), m.group(1))


@pytest.fixture(scope="module")
def pop_lake(tmp_path_factory: pytest.TempPathFactory, arrangements_dir: Path) -> Lake:
    base = tmp_path_factory.mktemp("pop")
    lake = Lake(base / "lake")
    _add(lake, _songs(arrangements_dir, 1, 24, base / "a"))
    return lake


def _songs_in_splits(lake: Lake, version: str, name: str) -> dict[str, set[str]]:
    rows = lake.query(
        "SELECT DISTINCT p.source_uri, sp.split FROM snapshot_pieces sp JOIN pieces p USING (piece_id) "
        f"WHERE sp.name = '{name}' AND sp.version = '{version}'"
    ).to_pylist()
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(_song(r["source_uri"]), set()).add(r["split"])
    return out


def test_no_song_spans_two_splits_and_the_card_says_so(pop_lake: Lake) -> None:
    r = _create(pop_lake, S.SnapshotSpec("pop", "remi", split=(0.5, 0.25, 0.25), seed=1))
    by_song = _songs_in_splits(pop_lake, r.version, "pop")
    assert len(by_song) == 23 and all(len(sp) == 1 for sp in by_song.values())  # 017 = 018
    assert len({next(iter(sp)) for sp in by_song.values()}) == 3  # all three splits used
    leak = r.manifest["leakage"]
    assert leak["song_groups_spanning_splits"] == 0 and leak["song_groups"] == 23
    assert leak["dedup_clusters_spanning_splits"] == 0
    card = S.show(pop_lake, "pop")
    assert "0 song groups span two splits (23 song groups)" in card
    v = S.verify(pop_lake, "pop")
    assert v.ok and v.line().endswith("0 of 23 song groups span two splits")
    seqs = pq.read_table(r.path / "train" / "sequences.parquet")
    assert {"song_group", "dedup_cluster"} <= set(seqs.column_names)


def test_verify_fails_when_a_song_group_spans_two_splits(pop_lake: Lake, tmp_path: Path) -> None:
    r = _create(pop_lake, S.SnapshotSpec("pop", "remi", split=(0.5, 0.25, 0.25), seed=1))
    copy = tmp_path / "copy"
    shutil.copytree(r.path, copy)
    # give a valid sequence the song group of a train sequence, and the manifest the new hash
    train = pq.read_table(copy / "train" / "sequences.parquet")
    rel = "valid/sequences.parquet"
    valid = pq.read_table(copy / rel)
    groups = valid.column("song_group").to_pylist()
    groups[0] = train.column("song_group")[0].as_py()
    pq.write_table(
        valid.set_column(valid.schema.get_field_index("song_group"), "song_group", pa.array(groups)), copy / rel
    )
    m = json.loads((copy / "manifest.json").read_text())
    m["files"][rel] = {"sha256": S._sha256_file(copy / rel), "bytes": (copy / rel).stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(m))
    v = S.verify_dir(copy)
    assert not v.ok
    assert v.problems == [f"1 song groups span two splits (e.g. {groups[0]}): the splits leak"]


def test_assign_splits_keeps_the_previous_majority_and_hashes_new_groups() -> None:
    units = {"a": "g1", "b": "g1", "c": "g1", "d": "g2", "e": "g3"}
    prev = {"a": "train", "b": "train", "c": "test", "d": "valid"}
    got = S.assign_splits(units, 0, (0.8, 0.1, 0.1), prev)
    assert got["a"] == got["b"] == got["c"] == "train"  # c moves: its group joined a train group
    assert got["d"] == "valid"
    assert got["e"] == S.split_of("g3", 0, (0.8, 0.1, 0.1))


def test_pieces_keep_their_split_when_the_lake_grows(tmp_path: Path, arrangements_dir: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _add(lake, _songs(arrangements_dir, 1, 10, tmp_path / "a"))
    spec = S.SnapshotSpec("grow", "remi", split=(0.5, 0.25, 0.25), seed=7)
    first = _create(lake, spec)
    assert first.manifest["split"]["previous_version"] is None and first.manifest["split"]["kept_from_version"] is None
    before = {
        r["piece_id"]: r["split"]
        for r in lake.query(
            f"SELECT DISTINCT piece_id, split FROM snapshot_pieces WHERE version = '{first.version}'"
        ).to_pylist()
    }
    _add(lake, _songs(arrangements_dir, 11, 20, tmp_path / "b"))
    second = _create(lake, spec)
    assert second.version != first.version
    assert second.manifest["split"]["previous_version"] == first.version
    after = {
        r["piece_id"]: r["split"]
        for r in lake.query(
            f"SELECT DISTINCT piece_id, split FROM snapshot_pieces WHERE version = '{second.version}'"
        ).to_pylist()
    }
    assert len(after) > len(before)
    assert {p: after[p] for p in before} == before
    assert second.manifest["split"]["moved"] == [] and "pieces moved" not in S.show(lake, "grow")
    # the same selection again: the same version, nothing rewritten
    assert _create(lake, spec).version == second.version


def test_the_card_names_the_pieces_that_moved_when_groups_merged(tmp_path: Path, arrangements_dir: Path) -> None:
    lake = Lake(tmp_path / "lake")
    src = _songs(arrangements_dir, 32, 32, tmp_path / "a")  # 032: two melody versions (containment 0.67)
    with lake.lock("test"), Engine(workers=1) as e:
        ingest(lake, DirSource(src, name="pop909"), e, IngestConfig())
        curate(lake, e, song_threshold=0.9)  # strict: two song groups
        tokenize(lake, e, ["remi"])
    groups = {r["song_group"] for r in lake.query("SELECT DISTINCT song_group FROM features").to_pylist()}
    assert len(groups) == 2
    fractions = (0.34, 0.33, 0.33)
    seed = next(s for s in range(100) if len({S.split_of(g, s, fractions) for g in groups}) == 2)
    spec = S.SnapshotSpec("m", "remi", split=fractions, seed=seed)
    first = _create(lake, spec)
    assert first.manifest["leakage"]["song_groups"] == 2
    with lake.lock("test"), Engine(workers=1) as e:
        curate(lake, e)  # the default threshold joins the two versions: one song
    second = _create(lake, spec)
    moved = second.manifest["split"]["moved"]
    assert moved and len({(m["from"], m["to"]) for m in moved}) == 1
    assert (
        second.manifest["leakage"]["song_groups"] == 1
        and second.manifest["leakage"]["song_groups_spanning_splits"] == 0
    )
    card = S.show(lake, "m")
    assert f"{len(moved)} pieces moved since version {first.version}" in card
    for m in moved:
        assert f"- {m['piece_id']}: {m['from']} -> {m['to']}" in card
