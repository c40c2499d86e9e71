"""The lake on an object store: ``s3://bucket/lake`` against moto's S3 server on 127.0.0.1.

The same commands on the same files give the same tables as on a local lake, also when the
work runs on a real ``dask scheduler`` with two ``dask worker`` processes; DuckDB reads the
tables with its httpfs extension (or through fsspec); a kill -9 mid-ingest loses nothing;
the writer lock is a lease object that a dead holder does not keep.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus.lake import Lake, LakeError, LakeLocked, Transaction
from tests.test_faults import stage_tables
from tests.test_ingest import snapshot_tables

REPO = Path(__file__).resolve().parents[1]


def _cli(lake: str | Path, *args: str, workers: int = 2, scheduler: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "corpus.cli", "--lake", str(lake)]
    cmd += ["--scheduler", scheduler] if scheduler else ["--workers", str(workers)]
    return [*cmd, *args]


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        cmd, env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    return r


def _pipeline(lake: str | Path, data_dir: Path, scheduler: str | None = None) -> None:
    """Ingest two sources, curate, tokenize (REMI): every stage writes the lake."""
    _run(_cli(lake, "ingest", "dir", str(data_dir / "midi"), "--source", "m", scheduler=scheduler))
    _run(_cli(lake, "ingest", "lakh", str(data_dir / "lakh"), scheduler=scheduler))
    _run(_cli(lake, "curate", scheduler=scheduler))
    _run(_cli(lake, "tokenize", "--scheme", "remi", scheduler=scheduler))


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Lake:
    root = tmp_path_factory.mktemp("ref") / "lake"
    _pipeline(root, data_dir)
    return Lake(root)


# ------------------------------------------------------------------ the whole pipeline
@pytest.mark.cluster
def test_dask_cluster_over_s3_lake_equals_local_run(
    local_ref: Lake,
    s3_lake_url: str,
    dask_cluster: str,
    data_dir: Path,
) -> None:
    _pipeline(s3_lake_url, data_dir, scheduler=dask_cluster)
    lake = Lake(s3_lake_url)
    got, want = stage_tables(lake), stage_tables(local_ref)
    assert got == want
    assert len(want["tokens"]) > 150 and len(want["piece_analysis"]) > 150
    # the raw store holds every piece's bytes
    (ok,) = lake.query("SELECT count(DISTINCT piece_id) AS n FROM pieces").column("n").to_pylist()
    assert len(lake.list_files("raw")) == ok
    # no intent marker left, the lock released, the near-duplicate index in place
    assert lake.list_files("_staging") == []
    assert not lake.file_exists(".lock")
    r = _run(_cli(s3_lake_url, "similar", want["tokens"][0][2][:16], "--k", "3"))
    assert "near-duplicates (whole-piece vectors, cosine):" in r.stdout and "song evidence" in r.stdout


def test_query_through_duckdb_httpfs(local_ref: Lake, s3_lake_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _copy_lake(local_ref, s3_lake_url)
    lake = Lake(s3_lake_url)
    con = lake.connect()
    try:
        (loaded,) = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchone()
        via_httpfs = con.execute("SELECT texture, count(*) FROM features GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        con.close()
    assert loaded is True
    local = local_ref.query("SELECT texture, count(*) AS n FROM features GROUP BY 1 ORDER BY 1")
    assert via_httpfs == list(zip(*local.to_pydict().values()))
    # DuckLake reads s3:// through httpfs only: the fsspec fallback is refused with one line
    monkeypatch.setenv("MIDICORPUS_DUCKDB_S3", "fsspec")
    with pytest.raises(LakeError, match="DuckLake, which reads s3:// only through DuckDB's httpfs"):
        Lake(s3_lake_url).connect()
    monkeypatch.setenv("MIDICORPUS_DUCKDB_S3", "ftp")
    with pytest.raises(LakeError, match="MIDICORPUS_DUCKDB_S3 must be auto, httpfs or fsspec"):
        Lake(s3_lake_url).connect()


def _copy_lake(src: Lake, url: str) -> None:
    """A local lake copied to the object store: its files as they are, its tables through DuckLake
    (the local catalog attached beside the PostgreSQL one, rows inserted in one transaction)."""
    from corpus.lake import _q, load_extensions
    from schemas import TABLES

    dst = Lake(url)
    with dst.lock("copy"):
        con = dst._writer
        load_extensions(con, "sqlite_scanner")
        con.execute(
            f"ATTACH {_q('ducklake:sqlite:' + str(src.catalog_path))} AS src "
            f"(READ_ONLY, DATA_PATH {_q(src.data_path)}, OVERRIDE_DATA_PATH true)"
        )
        with dst.transaction({"command": "copy"}) as tx:
            for t in TABLES:
                tx.write_select(t, f'SELECT * FROM src.store."{t}"')
    for rel in src.list_files("."):
        rel = rel.removeprefix("./")
        if not rel.startswith((".lock", "catalog", "data/")):
            dst.fs.put_file(str(src.root / rel), dst._key(rel))


PLAIN_DUCKDB_S3 = """
import sys, duckdb
from corpus import objectstore
from corpus.lake import ducklake_catalog, load_extensions
con = duckdb.connect()
load_extensions(con, "postgres_scanner")
assert objectstore._httpfs(con)
con.execute(objectstore._s3_secret_sql())
con.execute(f"ATTACH 'ducklake:{ducklake_catalog(sys.argv[1])}' AS lake (READ_ONLY)")
con.execute("USE lake")
print(con.execute("SELECT count(*) FROM pieces WHERE status = 'ok'").fetchone()[0])
"""


def test_a_plain_duckdb_opens_the_bucket_lake_through_its_catalog(s3_lake_url: str, data_dir: Path) -> None:
    _run(_cli(s3_lake_url, "ingest", "dir", str(data_dir / "lakh")))
    r = _run([sys.executable, "-c", PLAIN_DUCKDB_S3, os.environ["MIDICORPUS_CATALOG"]])
    assert r.stdout.strip() == "11"


# ------------------------------------------------------------------ faults
def test_kill_minus_9_ingest_on_s3_then_rerun_equals_uninterrupted(
    s3_lake_url: str, data_dir: Path, tmp_path: Path
) -> None:
    env = {"MIDICORPUS_COMMIT_PIECES": "25"}
    src = data_dir / "midi"
    ref = tmp_path / "ref"
    _run(_cli(ref, "ingest", "dir", str(src), "--source", "s", workers=1), **env)
    lake = Lake(s3_lake_url)
    rng = random.Random(99)
    kills = 0
    for _ in range(3):
        target = _n_commits(lake) + rng.randint(1, 3)
        proc = subprocess.Popen(
            _cli(s3_lake_url, "ingest", "dir", str(src), "--source", "s", workers=1),
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while proc.poll() is None and _n_commits(lake) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        Lake(s3_lake_url).query("SELECT count(*) FROM pieces")  # readable right after the kill
    assert kills >= 1
    # the dead writer's lease does not block: its pid is gone on this host
    _run(_cli(s3_lake_url, "ingest", "dir", str(src), "--source", "s", workers=1), **env)
    assert snapshot_tables(Lake(s3_lake_url)) == snapshot_tables(Lake(ref))


def _n_commits(lake: Lake) -> int:
    try:
        return len(lake.commits())
    except LakeError:  # the catalog is being made
        return 0


def test_uncommitted_transaction_is_invisible_then_dropped(s3_lake_url: str) -> None:
    lake = Lake(s3_lake_url)
    row = {"scheme": "x", "tokenizer_hash": "h", "tokenization": "REMI", "config_json": "{}"}
    with lake.lock("test"):
        with lake.transaction({"command": "kept"}) as tx:
            tx.write("tokenizers", [row])
        crashed = Transaction(lake, {"command": "crashed"})
        crashed.write("tokenizers", [{**row, "scheme": "y"}])  # written, never committed: as if killed here
        assert Lake(s3_lake_url).query("SELECT scheme FROM tokenizers").column("scheme").to_pylist() == ["x"]
    assert Lake(s3_lake_url).query("SELECT scheme FROM tokenizers").column("scheme").to_pylist() == ["x"]
    with lake.lock("maintain"):
        lake.maintain(keep_days=0)  # files no version reads are deleted
    listed = lake.query("SELECT count(*) AS n FROM tokenizers").column("n").to_pylist()
    assert listed == [1] and len(lake.list_files("data/store/tokenizers")) == 1


def test_a_failed_transaction_leaves_nothing(s3_lake_url: str) -> None:
    lake = Lake(s3_lake_url)
    with lake.lock("test"), pytest.raises(RuntimeError), lake.transaction() as tx:
        tx.write("tokenizers", [{"scheme": "z", "tokenizer_hash": "h", "tokenization": "REMI", "config_json": "{}"}])
        raise RuntimeError("boom")
    assert lake.commits() == [] and lake.query("SELECT count(*) AS n FROM tokenizers").column("n").to_pylist() == [0]


def test_raw_store_batches_uploads_before_the_commit(s3_lake_url: str) -> None:
    import hashlib

    lake = Lake(s3_lake_url)
    blobs = [f"MThd{i}".encode() * (i + 1) for i in range(70)]
    with lake.lock("test"):
        shas = [lake.put_raw(b) for b in blobs[:10]]
        assert lake.list_files("raw") == []  # pending: uploaded in one concurrent batch
        assert lake.get_raws(shas) == blobs[:10] and lake.has_raw(shas[0])
        with lake.transaction() as tx:
            tx.write(
                "tokenizers", [{"scheme": "r", "tokenizer_hash": "h", "tokenization": "REMI", "config_json": "{}"}]
            )
        assert len(lake.list_files("raw")) == 10  # stored before the commit record
        shas += [lake.put_raw(b) for b in blobs[10:]]
    fresh = Lake(s3_lake_url)
    assert fresh.get_raws(shas) == blobs
    assert shas == [hashlib.sha256(b).hexdigest() for b in blobs]


# ------------------------------------------------------------------ the lease lock
def _lock_body(**kw: object) -> bytes:
    return json.dumps(
        {
            "holder": "pid 1 (other)",
            "host": socket.gethostname(),
            "pid": 1,
            "token": "t",
            "expires": time.time() + 600,
            **kw,
        }
    ).encode()


def test_second_writer_is_refused_with_the_holder(s3_lake_url: str) -> None:
    lake = Lake(s3_lake_url)
    with lake.lock("ingest dir"):
        with pytest.raises(LakeLocked, match=rf"locked by pid {os.getpid()} \(ingest dir\) on {socket.gethostname()}"):
            with Lake(s3_lake_url).lock("curate"):
                pass
    with Lake(s3_lake_url).lock("curate"):  # released
        pass
    assert not lake.file_exists(".lock")


def test_lease_of_a_live_remote_holder_is_respected_an_expired_one_taken(s3_lake_url: str) -> None:
    lake = Lake(s3_lake_url)
    lake.create()
    lake.fs.pipe_file(lake._key(".lock"), _lock_body(host="elsewhere", holder="pid 7 (crawl)"))
    with pytest.raises(LakeLocked, match=r"locked by pid 7 \(crawl\) on elsewhere"):
        with lake.lock("x"):
            pass
    lake.fs.pipe_file(lake._key(".lock"), _lock_body(host="elsewhere", expires=time.time() - 1))
    with lake.lock("x"):
        assert json.loads(lake.read_bytes(".lock"))["pid"] == os.getpid()


def test_lease_of_a_dead_local_process_is_taken_at_once(s3_lake_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    lake = Lake(s3_lake_url)
    lake.create()
    lake.fs.pipe_file(lake._key(".lock"), _lock_body(pid=proc.pid))
    with lake.lock("x"):
        pass


def test_lease_is_renewed_while_held(s3_lake_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDICORPUS_LOCK_TTL", "0.6")
    lake = Lake(s3_lake_url)
    with lake.lock("long"):
        first = json.loads(lake.read_bytes(".lock"))["expires"]
        time.sleep(1.0)
        later = json.loads(lake.read_bytes(".lock"))["expires"]
        assert later > first + 0.1
        assert later > time.time()  # never lapsed while held
        with pytest.raises(LakeLocked):
            with Lake(s3_lake_url).lock("other"):
                pass


# ------------------------------------------------------------------ errors, one line each
def test_missing_bucket_and_unreachable_store_are_one_line(s3_env: dict[str, str], data_dir: Path) -> None:
    r = subprocess.run(
        _cli("s3://no-such-bucket-here/lake", "ingest", "dir", str(data_dir / "lakh")),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert (
        r.stderr
        == "midicorpus: error: cannot create the lake at 's3://no-such-bucket-here/lake': bucket 'no-such-bucket-here' does not exist\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = subprocess.run(
        _cli("s3://bucket/lake", "sql", "SELECT count(*) FROM pieces"),
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
            "AWS_MAX_ATTEMPTS": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(
        "midicorpus: error: object store 's3://bucket/lake' failed while looking for the lake: EndpointConnectionError"
    )  # sql first asks whether the lake is there


def test_local_only_commands_say_so(s3_lake_url: str) -> None:
    with pytest.raises(LakeError, match="needs a lake on a local file system"):
        _ = Lake(s3_lake_url).root
