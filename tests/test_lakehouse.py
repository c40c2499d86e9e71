"""The tables in DuckLake: what the hand-written layer guaranteed, and what DuckLake adds.

A plain DuckDB opens the lake (also a copied or moved one) and answers as `midicorpus sql`;
a kill -9 in the middle of a two-table transaction leaves nothing visible; a reader in another
process sees whole commits only; every commit is a version the corpus can be queried at (also
through a dataset snapshot's name); 50 nightly runs leave, after `lake maintain`, as many files
as one; `lake upgrade` moves a lake built by the code before DuckLake and gives the tables a
fresh run gives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

from corpus.lake import Lake, LakeError
from tests.test_faults import stage_tables

REPO = Path(__file__).resolve().parents[1]
BEFORE_DUCKLAKE = "6f648fe"  # the last commit of the hand-written layer (tables/ + _log/)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _cli(
    lake: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(lake), "--workers", "1", *args],
        env=env or _env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


PLAIN_DUCKDB = """
import sys, duckdb
from corpus.lake import load_extensions
con = duckdb.connect()
load_extensions(con, "sqlite_scanner")
con.execute("ATTACH 'ducklake:sqlite:catalog.sqlite' AS lake (READ_ONLY)")
con.execute("USE lake")
print(con.execute(sys.argv[1]).fetchall())
"""


def _plain_duckdb(folder: Path, sql: str) -> str:
    """A DuckDB with nothing of ours but the extension loader, started in the lake folder."""
    r = subprocess.run(
        [sys.executable, "-c", PLAIN_DUCKDB, sql], cwd=folder, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    lake = tmp_path_factory.mktemp("lh") / "lake"
    _ok(_cli(lake, "ingest", "dir", str(data_dir / "midi"), "--source", "m"))
    _ok(_cli(lake, "curate"))
    return lake


QUERY = "SELECT texture, count(*) AS n, sum(n_notes)::BIGINT AS notes FROM features GROUP BY texture ORDER BY texture"


def test_a_plain_duckdb_in_the_lake_folder_answers_as_midicorpus_sql(curated: Path, tmp_path: Path) -> None:
    ours = Lake(curated).query(QUERY).to_pylist()
    assert sum(r["n"] for r in ours) > 150
    want = str([(r["texture"], r["n"], r["notes"]) for r in ours])
    assert _plain_duckdb(curated, QUERY) == want
    # the views are the contract's, the tables stay in the store schema
    views = _plain_duckdb(curated, "SELECT view_name FROM duckdb_views() WHERE database_name = 'lake' ORDER BY 1")
    assert "'features'" in views and "'song_groups'" in views and "'pieces'" in views
    # copied elsewhere and the original moved away: both copies open, through us and plainly
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(curated, copy)
    moved = tmp_path / "moved"
    os.rename(copy, moved)
    assert Lake(moved).query(QUERY).to_pylist() == ours
    assert _plain_duckdb(moved, QUERY) == want
    assert _ok(_cli(moved, "sql", "SELECT count(*) FROM features", "--format", "csv")).splitlines()[1] == str(
        sum(r["n"] for r in ours)
    )


def test_every_commit_is_a_version_and_a_snapshot_name_queries_its_corpus(
    curated: Path, tmp_path: Path, data_dir: Path
) -> None:
    lake_dir = tmp_path / "lake"
    shutil.copytree(curated, lake_dir)
    lake = Lake(lake_dir)
    commits = lake.commits()
    assert commits[0]["meta"]["command"].startswith("ingest")
    after_ingest = commits[0]["snapshot_id"]
    assert lake.query("SELECT count(*) AS n FROM piece_analysis_t", at=after_ingest).column("n").to_pylist() == [0]
    n_now = lake.query("SELECT count(*) AS n FROM piece_analysis_t").column("n").to_pylist()[0]
    assert n_now > 150
    _ok(_cli(lake_dir, "tokenize", "--scheme", "remi"))
    _ok(_cli(lake_dir, "snapshot", "create", "ds", "--scheme", "remi"))
    # more pieces arrive after the snapshot; the snapshot's name still queries what it saw
    _ok(_cli(lake_dir, "ingest", "dir", str(data_dir / "lakh"), "--source", "late"))
    _ok(_cli(lake_dir, "curate"))
    at_ds = _ok(
        _cli(lake_dir, "sql", "--at", "ds", "SELECT count(*) FROM pieces WHERE source = 'late'", "--format", "csv")
    )
    now = _ok(_cli(lake_dir, "sql", "SELECT count(*) FROM pieces WHERE source = 'late'", "--format", "csv"))
    assert at_ds.splitlines()[1] == "0" and int(now.splitlines()[1]) > 0
    r = _cli(lake_dir, "sql", "--at", "999999", "SELECT 1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "No snapshot found at version 999999" in r.stderr
    listing = _ok(_cli(lake_dir, "lake", "versions", "--last", "3"))
    assert "curate dedup" in listing and len(listing.splitlines()) == 2 + 3


WRITER = """
import sys, time
import pyarrow as pa
from corpus.lake import Lake
lake = Lake(sys.argv[1])
mode, n = sys.argv[2], int(sys.argv[3])
with lake.lock("test writer"):
    for i in range(n):
        with lake.transaction({"command": "test"}) as tx:
            rows = [{"piece_id": f"p{i:04d}-{j}", "track_index": j, "n_notes": i} for j in range(50)]
            tx.write("tracks", rows)
            tx.write("piece_facts", [{"piece_id": f"p{i:04d}-{j}", "n_notes": i} for j in range(50)])
            if mode == "hang":
                print("written", flush=True)
                time.sleep(600)
        if mode == "paced":
            time.sleep(0.2)  # so that a reader's queries land between the commits
"""


def _writer(lake: Path, mode: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(lake), mode, str(n)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _counts(lake: Lake) -> tuple[int, int]:
    con = lake.connect()
    try:
        return con.execute("SELECT (SELECT count(*) FROM tracks_t), (SELECT count(*) FROM piece_facts_t)").fetchone()
    finally:
        con.close()


def test_kill_minus_9_inside_a_two_table_transaction_leaves_nothing_visible(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    w = _writer(root, "commit", 3)
    assert w.wait(timeout=120) == 0, w.stderr.read()
    lake = Lake(root)
    assert _counts(lake) == (150, 150)
    versions = len(lake.commits())
    w = _writer(root, "hang", 1)
    assert w.stdout.readline().strip() == "written"  # both tables written, not committed
    os.killpg(w.pid, signal.SIGKILL)
    w.wait()
    assert _counts(lake) == (150, 150) and len(lake.commits()) == versions
    # the next writer takes the lock at once and commits; the killed rows never appear
    w = _writer(root, "commit", 2)
    assert w.wait(timeout=120) == 0, w.stderr.read()
    assert _counts(lake) == (250, 250)


HOT_JOURNAL = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 2")  # pages spill into the catalog file before the commit
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE half_written (x BLOB)")
for _ in range(200):
    db.execute("INSERT INTO half_written VALUES (zeroblob(4096))")
os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction, as a killed commit would be
"""


def test_a_reader_after_a_writer_killed_inside_a_catalog_commit_rolls_back_its_journal(tmp_path: Path) -> None:
    """A writer killed inside SQLite's commit leaves a hot journal in the catalog; a read-only
    attach may not roll it back ("attempt to write a readonly database"): the reader does, once,
    and then reads the last commit."""
    root = tmp_path / "lake"
    w = _writer(root, "commit", 2)
    assert w.wait(timeout=120) == 0, w.stderr.read()
    lake = Lake(root)
    r = subprocess.run([sys.executable, "-c", HOT_JOURNAL, str(lake.catalog_path)], timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert Path(f"{lake.catalog_path}-journal").stat().st_size > 0  # the hot journal is there
    assert _counts(Lake(root)) == (100, 100)
    assert not Path(f"{lake.catalog_path}-journal").exists()  # rolled back
    w = _writer(root, "commit", 1)  # and the lake goes on
    assert w.wait(timeout=120) == 0, w.stderr.read()
    assert _counts(Lake(root)) == (150, 150)


def test_a_reader_in_another_process_sees_whole_commits_only(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    w = _writer(root, "commit", 1)
    assert w.wait(timeout=120) == 0, w.stderr.read()
    lake = Lake(root)
    w = _writer(root, "paced", 30)
    seen = set()
    while w.poll() is None:
        a, b = _counts(lake)
        assert a == b and a % 50 == 0, (a, b)  # never one table without the other, never half a write
        seen.add(a)
    assert w.returncode == 0, w.stderr.read()
    assert _counts(lake) == (31 * 50, 31 * 50)
    assert len(seen) >= 2  # the reads did interleave with the commits


def test_columns_added_later_read_as_null_in_older_rows(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    with lake.lock("test"):
        with lake.transaction() as tx:
            tx.write("pieces", [{"piece_id": "a", "status": "ok"}], {"source": "s"})
        with lake.transaction() as tx:
            tx.write("pieces", [{"piece_id": "b", "status": "ok", "new_provenance": "x"}], {"source": "s"})
    rows = lake.query("SELECT piece_id, new_provenance FROM pieces_t ORDER BY piece_id").to_pylist()
    assert rows == [{"piece_id": "a", "new_provenance": None}, {"piece_id": "b", "new_provenance": "x"}]


def test_a_version_older_than_a_table_or_column_is_queried_with_todays_views(tmp_path: Path) -> None:
    """A lake version written before a table (``chords``) or a column (``expressive``) existed, as
    every lake of an earlier release is: ``sql --at`` reads the missing table as no rows and the
    missing column as NULL, instead of failing on a name the views use."""
    lake = Lake(tmp_path / "lake")
    with lake.lock("test"):
        with lake.transaction() as tx:
            tx.write("pieces", [{"piece_id": "a", "status": "ok"}], {"source": "s"})
            tx.write("piece_analysis", [{"piece_id": "a", "texture": "monophonic", "expressive": "quantized"}])
        con = lake._writer
        # what an older release's catalog holds: no chords table, no expressive column
        con.execute("BEGIN")
        con.execute('DROP TABLE lake.store."chords"')
        con.execute('ALTER TABLE lake.store."piece_analysis" DROP COLUMN "expressive"')
        con.execute("COMMIT")
    old = lake.current_version()
    assert old is not None
    rows = lake.query("SELECT piece_id, texture, expressive FROM piece_analysis_t", at=old).to_pylist()
    assert rows == [{"piece_id": "a", "texture": "monophonic", "expressive": None}]
    assert lake.query("SELECT count(*) AS n FROM chords", at=old).to_pylist() == [{"n": 0}]
    r = _cli(tmp_path / "lake", "sql", "--at", str(old), "SELECT count(*) FROM chords", "--format", "csv")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "0", r.stderr
    # the version before the drop still has both
    assert lake.query("SELECT expressive FROM piece_analysis_t", at=old - 1).to_pylist() == [
        {"expressive": "quantized"}
    ]


def test_a_year_of_nightly_runs_then_maintain_leaves_the_files_of_one(tmp_path: Path) -> None:
    """50 simulated nightly runs, each committing a few rows to three tables: files and versions
    grow with the runs; `lake maintain` compacts and expires them (keeping a version a dataset
    snapshot uses), and the answers stay the same."""
    root = tmp_path / "lake"
    lake = Lake(root)
    with lake.lock("test"):
        for night in range(50):
            with lake.transaction({"command": f"night {night}"}) as tx:
                tx.write(
                    "pieces", [{"piece_id": f"n{night}-{i}", "status": "ok"} for i in range(20)], {"source": "crawl"}
                )
                tx.write("tracks", [{"piece_id": f"n{night}-{i}", "track_index": 0, "n_notes": i} for i in range(20)])
                tx.write("piece_facts", [{"piece_id": f"n{night}-{i}", "n_notes": i} for i in range(20)])
    kept = lake.commits()[24]["snapshot_id"]
    q = "SELECT count(*) AS n, sum(n_notes) AS s FROM tracks_t"
    before = lake.query(q).to_pylist()
    at_kept = lake.query(q, at=kept).to_pylist()
    files = lambda: len(list((root / "data").rglob("*.parquet")))  # noqa: E731
    n_before = files()
    assert n_before >= 150
    t0 = time.perf_counter()
    lake.query(q)
    slow = time.perf_counter() - t0
    with lake.lock("maintain"):
        res = lake.maintain(keep_days=0, keep_versions=[kept])
    assert res["files_before"] >= 150 and res["files_after"] <= 6, res
    assert files() <= 6 + 3  # the kept version's files: at most one more set
    assert res["snapshots_after"] <= 3, res
    assert lake.query(q).to_pylist() == before
    assert lake.query(q, at=kept).to_pylist() == at_kept
    t0 = time.perf_counter()
    lake.query(q)
    assert time.perf_counter() - t0 < slow * 3 + 0.5
    # a version that was expired is gone, with one line
    with pytest.raises(LakeError, match="cannot open version 3 of the lake"):
        lake.query(q, at=3)
    r = _cli(root, "lake", "maintain")
    assert r.returncode == 0 and r.stdout.startswith("lake maintain: data files"), r.stderr


def test_maintain_compacts_in_batches_with_small_row_groups_and_restores_the_lake_options(tmp_path: Path) -> None:
    """`lake maintain` writes its merged files with row groups of MAINTAIN_ROW_GROUP_ROWS rows (the
    Parquet writer's row group is memory outside DuckDB's limit), one batch of merges per call, and
    leaves the lake's own row-group option and one version for all its batches."""
    import pyarrow.parquet as pq

    from corpus import lake as lake_mod

    root = tmp_path / "lake"
    lake = Lake(root)
    with lake.lock("test"):
        lake._writer.execute("CALL ducklake_set_option('lake', 'parquet_row_group_size', 50000)")
        for night in range(12):
            with lake.transaction({"command": f"night {night}"}) as tx:
                rows = [{"piece_id": f"n{night}-{i}", "track_index": 0, "n_notes": i} for i in range(3000)]
                tx.write("tracks", rows)
        before = lake.query("SELECT count(*) AS n, sum(n_notes) AS s FROM tracks_t").to_pylist()
        res = lake.maintain(keep_days=0)
        opt = lake._writer.execute(
            "SELECT value FROM ducklake_options('lake') WHERE option_name = 'parquet_row_group_size'"
        ).fetchall()
    assert opt == [("50000",)]
    assert res["files_after"] == 1 and res["snapshots_after"] <= 2, res  # the merged version, the option restored
    assert lake.query("SELECT count(*) AS n, sum(n_notes) AS s FROM tracks_t").to_pylist() == before
    (merged,) = (root / "data").rglob("*.parquet")
    meta = pq.ParquetFile(merged).metadata
    assert meta.num_rows == 36000
    # DuckDB's row-group size is a minimum, reached a chunk at a time: more than one group of 36,000
    # rows (the lake's own 50,000 would have written one)
    assert lake_mod.MAINTAIN_ROW_GROUP_ROWS < 36000 and meta.num_row_groups >= 2
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) < 2 * lake_mod.MAINTAIN_ROW_GROUP_ROWS


@pytest.fixture(scope="module")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as it was before DuckLake, from this repository's history."""
    out = tmp_path_factory.mktemp("before-ducklake")
    r = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", BEFORE_DUCKLAKE, "corpus", "schemas"],
        capture_output=True,
    )
    if r.returncode != 0:
        pytest.skip(f"commit {BEFORE_DUCKLAKE} not in this clone's history: {r.stderr.decode().strip()}")
    tar = out / "code.tar"
    tar.write_bytes(r.stdout)
    with tarfile.open(tar) as tf:
        tf.extractall(out, filter="data")
    return out


def test_lake_upgrade_moves_a_lake_of_the_old_layout(old_code: Path, tmp_path: Path, data_dir: Path) -> None:
    old = tmp_path / "old"
    env = {**os.environ, "PYTHONPATH": str(old_code)}
    for args in (
        ("ingest", "dir", str(data_dir / "midi"), "--source", "m"),
        ("curate",),
        ("tokenize", "--scheme", "remi"),
    ):
        _ok(_cli(old, *args, env=env, cwd=old_code))
    assert (old / "_log").is_dir() and not (old / "catalog.sqlite").exists()
    r = _cli(old, "sql", "SELECT count(*) FROM pieces")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "run 'midicorpus lake upgrade'" in r.stderr
    out = _ok(_cli(old, "lake", "upgrade"))
    assert out.startswith(f"lake upgrade: {old} now in DuckLake") and "_before_ducklake" in out
    assert (old / "catalog.sqlite").is_file() and not (old / "_log").exists()
    # the same tables as a lake built by this code from the same files
    fresh = tmp_path / "fresh"
    for args in (
        ("ingest", "dir", str(data_dir / "midi"), "--source", "m"),
        ("curate",),
        ("tokenize", "--scheme", "remi"),
    ):
        _ok(_cli(fresh, *args))
    # its pieces were analysed by an older curate (no expressive or role columns): analysed again
    again = _ok(_cli(old, "curate"))
    assert "pieces analysed again (analysed by an older version" in again, again
    assert stage_tables(Lake(old)) == stage_tables(Lake(fresh))
    # it goes on working: a re-run has nothing to do, a second upgrade says there is nothing to upgrade
    assert ": 0 tokenized (0 tokens)" in _ok(_cli(old, "tokenize", "--scheme", "remi"))
    r = _cli(old, "lake", "upgrade")
    assert r.returncode == 2 and "already in DuckLake; nothing to upgrade" in r.stderr


def test_an_upgrade_killed_before_its_switch_leaves_the_old_lake(
    old_code: Path, tmp_path: Path, data_dir: Path
) -> None:
    old = tmp_path / "old"
    env = {**os.environ, "PYTHONPATH": str(old_code)}
    _ok(_cli(old, "ingest", "dir", str(data_dir / "midi"), "--source", "m", env=env, cwd=old_code))
    before = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file() and p.name != ".lock")
    # what a kill leaves: a half-made new catalog and data folder beside the untouched old layout
    (old / "catalog.upgrading.sqlite").write_bytes(b"half a catalog")
    (old / "data" / "store").mkdir(parents=True)
    r = _cli(old, "sql", "SELECT count(*) FROM pieces")
    assert r.returncode == 2 and "lake upgrade" in r.stderr
    assert (
        sorted(
            p.relative_to(old)
            for p in old.rglob("*")
            if p.is_file() and p.name != ".lock" and "upgrading" not in p.name
        )
        == before
    )
    _ok(_cli(old, "lake", "upgrade"))
    n = Lake(old).query("SELECT count(*) AS n FROM pieces").column("n").to_pylist()
    assert n == [198]


def test_an_object_store_lake_needs_a_catalog(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import boto3

    monkeypatch.delenv("MIDICORPUS_CATALOG", raising=False)
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    lake = Lake(f"s3://{bucket}/lake")
    with pytest.raises(LakeError, match="needs a catalog database that all its users reach: give --catalog"):
        with lake.lock("test"):
            pass


def test_two_machines_share_a_lake_through_its_postgresql_catalog(
    s3_lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog named once at creation is found by the next user from the lake itself."""
    lake = Lake(s3_lake_url)
    with lake.lock("test"):
        with lake.transaction() as tx:
            tx.write("tracks", pa.table({"piece_id": ["a", "b"], "track_index": pa.array([0, 1], pa.int32())}))
    catalog = os.environ["MIDICORPUS_CATALOG"]
    monkeypatch.delenv("MIDICORPUS_CATALOG")
    other = Lake(s3_lake_url)  # a second machine: only the lake's URL
    assert other.catalog == catalog
    assert other.query("SELECT count(*) AS n FROM tracks_t").column("n").to_pylist() == [2]
    files = other.list_files("data")
    assert files and all(f.startswith("data/store/tracks/") and f.endswith(".parquet") for f in files)
