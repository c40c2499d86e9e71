"""Ingestion end to end on the real files: accounting, provenance, idempotence, workers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource
from corpus.sources.lakh import LakhSource
from tests.test_parse import EXPECTED_REJECTS

TABLE_KEYS = {
    "pieces": "SELECT source, source_uri, piece_id, name, status, is_duplicate, reason, size_bytes, md5 FROM pieces",
    "rejects": "SELECT stage, piece_id, reason, detail FROM rejects",
    "tracks": "SELECT * FROM tracks",
    "features": "SELECT * FROM features",
}


def snapshot_tables(lake: Lake) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, without run ids and times (which differ by run)."""
    con = lake.connect()
    try:
        out = {}
        for name, sql in TABLE_KEYS.items():
            rows = con.execute(sql).fetchall()
            out[name] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


def run_ingest(lake: Lake, source, workers: int = 2, **cfg) -> object:
    with lake.lock("test"), Engine(workers=workers) as engine:
        return ingest(lake, source, engine, IngestConfig(**cfg))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Lake, object]:
    lake = Lake(tmp_path_factory.mktemp("lake") / "lake")
    summary = run_ingest(lake, DirSource(data_dir, name="shared"))
    return lake, summary


def test_every_input_accounted_for(ingested: tuple[Lake, object], data_dir: Path) -> None:
    lake, s = ingested
    n_files = sum(
        1 for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in {".mid", ".midi", ".kar", ".rmi"}
    )
    assert s.inputs == n_files == s.ok + s.rejected + s.duplicate
    con = lake.connect()
    (rows,) = con.execute("SELECT count(*) FROM pieces").fetchone()
    (ok,) = con.execute("SELECT count(*) FROM pieces WHERE status = 'ok' AND NOT is_duplicate").fetchone()
    (rej,) = con.execute("SELECT count(*) FROM pieces WHERE status = 'rejected'").fetchone()
    (dup,) = con.execute("SELECT count(*) FROM pieces WHERE status = 'ok' AND is_duplicate").fetchone()
    assert (rows, ok, rej, dup) == (s.inputs, s.ok, s.rejected, s.duplicate)
    # one reject row per rejected piece, one facts row per ok piece
    (nrej,) = con.execute("SELECT count(*) FROM rejects").fetchone()
    (nfeat,) = con.execute("SELECT count(*) FROM features").fetchone()
    (distinct_ok,) = con.execute("SELECT count(DISTINCT piece_id) FROM pieces WHERE status = 'ok'").fetchone()
    assert nrej == s.rejected and nfeat == distinct_ok == s.ok


def test_reject_codes_in_the_lake(ingested: tuple[Lake, object]) -> None:
    lake, _ = ingested
    got = dict(
        lake.connect()
        .execute("SELECT p.source_uri, r.reason FROM rejects r JOIN pieces p USING (piece_id) WHERE NOT p.is_duplicate")
        .fetchall()
    )
    assert {k.removeprefix("data/"): v for k, v in got.items()} == EXPECTED_REJECTS


def test_same_bytes_one_piece_all_provenances(ingested: tuple[Lake, object]) -> None:
    lake, _ = ingested
    # a Goldberg variation that is both in mutopia/ftp and in the site mirror
    rows = (
        lake.connect()
        .execute(
            "SELECT source_uri, is_duplicate FROM pieces WHERE piece_id = "
            "(SELECT piece_id FROM pieces WHERE source_uri = 'data/mutopia/ftp/BachJS/BWV988/bwv-988-v28/bwv-988-v28.mid')"
        )
        .fetchall()
    )
    uris = sorted(r[0] for r in rows)
    assert uris == [
        "data/mutopia-site/site_mirror/ftp/BachJS/BWV988/bwv-988-v28/bwv-988-v28.mid",
        "data/mutopia/ftp/BachJS/BWV988/bwv-988-v28/bwv-988-v28.mid",
    ]
    assert sum(1 for r in rows if not r[1]) == 1  # exactly one original
    raw = list((lake.root / "raw").rglob("*.mid"))
    (distinct,) = lake.connect().execute("SELECT count(DISTINCT piece_id) FROM pieces").fetchone()
    assert len(raw) == distinct


def test_raw_store_is_content_addressed(ingested: tuple[Lake, object]) -> None:
    import hashlib

    lake, _ = ingested
    for p in list((lake.root / "raw").rglob("*.mid"))[:50]:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.stem
        assert p.parent.name == p.stem[:2]


def test_second_run_adds_nothing(ingested: tuple[Lake, object], data_dir: Path) -> None:
    lake, first = ingested
    before = snapshot_tables(lake)
    commits = len(lake.commits())
    s = run_ingest(lake, DirSource(data_dir, name="shared"))
    assert s.unchanged == s.inputs == first.inputs and s.ok == s.rejected == s.duplicate == 0
    assert len(lake.commits()) == commits and snapshot_tables(lake) == before
    assert s.seconds < first.seconds / 2


def test_lakh_columns_and_cross_source_duplicates(
    ingested: tuple[Lake, object], data_dir: Path, tmp_path: Path
) -> None:
    lake, _ = ingested
    s = run_ingest(lake, LakhSource(data_dir / "lakh" / "lmd_full"))
    assert s.inputs == 11 and s.duplicate == 11  # same bytes came in through 'shared' already
    rows = (
        lake.connect()
        .execute("SELECT lmd_md5, md5, lmd_layout, name FROM pieces WHERE source = 'lakh' ORDER BY lmd_md5")
        .fetchall()
    )
    assert len(rows) == 11 and all(r[0] == r[1] and r[2] == "lmd_full" for r in rows)


def test_rejected_bytes_seen_again_count_as_rejected_not_duplicate(tmp_path: Path, data_dir: Path) -> None:
    """A copy of bytes the lake already rejected is a rejected input (same reason), not a duplicate."""
    bad = data_dir / "corrupt" / "jazz-soft-test-midi-files__test-not-a-midi-file.mid"
    good = data_dir / "midi" / "magenta" / "english1.mid"
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        shutil.copy(bad, tmp_path / folder / f"{folder}-bad.mid")
        shutil.copy(good, tmp_path / folder / f"{folder}-good.mid")
    lake = Lake(tmp_path / "lake")
    first = run_ingest(lake, DirSource(tmp_path / "first", name="a"), workers=1)
    assert (first.inputs, first.ok, first.rejected, first.duplicate) == (2, 1, 1, 0)
    again = run_ingest(lake, DirSource(tmp_path / "second", name="b"), workers=1)
    assert (again.inputs, again.ok, again.rejected, again.duplicate) == (2, 0, 1, 1)
    assert again.reasons == first.reasons and again.line() == "2 inputs = 0 ok + 1 rejected + 1 duplicate"
    rows = lake.connect().execute("SELECT source, status, is_duplicate FROM pieces ORDER BY source, status").fetchall()
    assert rows == [("a", "ok", False), ("a", "rejected", False), ("b", "ok", True), ("b", "rejected", True)]


def test_commits_by_time_as_well_as_by_count(tmp_path: Path, data_dir: Path) -> None:
    """A slow source commits every commit_seconds even far below commit_pieces."""
    import time

    from corpus.sources.base import SourceItem

    files = sorted((data_dir / "midi" / "magenta").glob("*.mid"))[:4]

    def slow():
        for p in files:
            time.sleep(0.6)
            yield SourceItem("slow", p.name, p.read_bytes(), p.name)

    lake = Lake(tmp_path / "lake")
    s = run_ingest(lake, slow(), workers=0, batch_files=1, commit_seconds=0.5)
    assert s.ok == 4 and s.commits >= 3  # by count alone (1000) it would be one commit at the end
    by_count = run_ingest(
        Lake(tmp_path / "other"), iter([SourceItem("x", p.name, p.read_bytes(), p.name) for p in files]), workers=0
    )
    assert by_count.commits == 1


def test_lakh_matched_tree_with_sidecars(tmp_path: Path, data_dir: Path) -> None:
    import json

    src = data_dir / "lakh/lmd_full/d/d30fbfaa2261c952d2508c48ce0e82d5.mid"
    md5 = src.stem
    root = tmp_path / "lmd_matched"
    for msd in ("TRAAAGR128F425B14B", "TRZZZZZ128F4212345"):
        d = root / msd[2] / msd[3] / msd[4] / msd
        d.mkdir(parents=True)
        shutil.copy(src, d / f"{md5}.mid")
    (tmp_path / "match_scores.json").write_text(
        json.dumps({"TRAAAGR128F425B14B": {md5: 0.71}, "TRZZZZZ128F4212345": {md5: 0.65}})
    )
    (tmp_path / "md5_to_paths.json").write_text(json.dumps({md5: ["D/Doobie Brothers/What a Fool Believes.mid"]}))
    tar = tmp_path / "lmd_matched.tar.gz"
    import tarfile

    with tarfile.open(tar, "w:gz") as tf:
        tf.add(root, arcname="lmd_matched")
    shutil.rmtree(root)
    lake = Lake(tmp_path / "lake")
    s = run_ingest(lake, LakhSource(tar), workers=1)
    assert (s.inputs, s.ok, s.duplicate) == (2, 1, 1)
    rows = (
        lake.connect()
        .execute("SELECT lmd_layout, msd_ids, max_match_score, original_names, lmd_md5 FROM pieces ORDER BY source_uri")
        .fetchall()
    )
    for layout, msd_ids, score, names, lmd in rows:
        assert layout == "lmd_matched" and lmd == md5 and score == 0.71
        assert msd_ids == ["TRAAAGR128F425B14B", "TRZZZZZ128F4212345"]
        assert names == ["D/Doobie Brothers/What a Fool Believes.mid"]


def test_one_and_two_workers_give_the_same_tables(data_dir: Path, tmp_path: Path) -> None:
    subset = data_dir / "midi" / "miditok"
    a, b = Lake(tmp_path / "a"), Lake(tmp_path / "b")
    run_ingest(a, DirSource(subset, name="x"), workers=1, batch_files=3)
    run_ingest(b, DirSource(subset, name="x"), workers=2, batch_files=5, commit_pieces=7)
    assert snapshot_tables(a) == snapshot_tables(b)


def test_parser_crash_in_a_dask_worker_costs_one_file(data_dir: Path, tmp_path: Path) -> None:
    from corpus.sources.base import SourceItem

    good = [p for p in sorted((data_dir / "midi/muspy").glob("*.mid"))][:6]
    items = [SourceItem("t", p.name, p.read_bytes(), p.name) for p in good]
    items.insert(3, SourceItem("t", "crash.mid", b"SEGV" + b"\x00" * 10, "crash.mid"))
    items.insert(5, SourceItem("t", "hang.mid", b"HANG", "hang.mid"))
    lake = Lake(tmp_path / "lake")
    s = run_ingest(
        lake, items, workers=2, parser_target="tests.helpers.faulty_parser:faulty", timeout_s=2.0, batch_files=2
    )
    assert s.inputs == 8
    reasons = dict(lake.connect().execute("SELECT source_uri, reason FROM rejects").fetchall())
    assert reasons["crash.mid"] == "parser_crash" and reasons["hang.mid"] == "parse_timeout"
    assert s.ok + s.rejected == 8
