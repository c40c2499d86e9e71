from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ARRANGEMENTS = REPO.parent / "shared" / "arrangements"
sys.path.insert(0, str(REPO))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MIDICORPUS_DEBUG", "")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    return DATA


@pytest.fixture(scope="session")
def arrangements_dir() -> Path:
    """POP909 songs, each as 2-8 arrangements sharing one melody (see its README)."""
    if not ARRANGEMENTS.is_dir():
        pytest.skip(f"arrangements not found at {ARRANGEMENTS} (shared/ must sit beside the repository)")
    return ARRANGEMENTS


@pytest.fixture
def lake(tmp_path: Path):
    from corpus.lake import Lake

    return Lake(tmp_path / "lake")


def midi_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".mid", ".midi", ".kar", ".rmi"})


# ------------------------------------------------------------------ object store (moto's S3 server)
@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """moto's standalone S3 server on 127.0.0.1 (a real HTTP server in its own process)."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def point_at_s3(mp: pytest.MonkeyPatch, endpoint: str) -> dict[str, str]:
    """Set the AWS settings that point boto, s3fs and DuckDB (also in subprocesses) at ``endpoint``."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "MIDICORPUS_DUCKDB_S3"):
        mp.delenv(k, raising=False)
    return env


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The moto server's settings in the environment for one test."""
    return point_at_s3(monkeypatch, s3_endpoint)


@pytest.fixture
def s3_lake_url(s3_env: dict[str, str], pg_catalog, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>/lake`` on the moto server, its DuckLake catalog a fresh PostgreSQL
    database (``MIDICORPUS_CATALOG`` in the environment, also for subprocesses)."""
    import uuid

    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    monkeypatch.setenv("MIDICORPUS_CATALOG", pg_catalog())
    return f"s3://{bucket}/lake"


# ------------------------------------------------------------------ PostgreSQL (DuckLake catalogs)
def _pg_bin() -> Path | None:
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (Debian's ``postgresql``) on 127.0.0.1, own data folder, stopped
    at the end; yields ``(bin_dir, port, user)``. As root, the server runs as user ``postgres``."""
    import os
    import shutil
    import subprocess

    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does)")
    import tempfile

    # not under pytest's own temp folder: that one is closed to other users, and the server runs as postgres
    base = Path(tempfile.mkdtemp(prefix="midicorpus-pg-"))
    data = base / "data"
    as_user: list[str] = []
    user = os.environ.get("USER") or "postgres"
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        user = "postgres"
        shutil.chown(base, "postgres")
    port = _free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
    r = subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "start",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.fail(f"PostgreSQL did not start: {r.stdout}{r.stderr}{(base / 'log').read_text()[-2000:]}")
    try:
        yield bindir, port, user
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def new_pg_database(pg_server) -> str:
    """A fresh database on the test server (``pg_server``); its URL."""
    import subprocess
    import uuid

    bindir, port, user = pg_server
    name = f"lake_{uuid.uuid4().hex[:12]}"
    subprocess.run(
        [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, name],
        check=True,
        capture_output=True,
    )
    return f"postgres://{user}@127.0.0.1:{port}/{name}"


@pytest.fixture
def pg_catalog(pg_server):
    """A function that creates a fresh database on the test server and returns its URL."""
    return lambda: new_pg_database(pg_server)


# ------------------------------------------------------------------ a real dask cluster on 127.0.0.1
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1; yields the address."""
    import subprocess
    import time

    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    ]
    time.sleep(1.0)
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [
                    str(bindir / "dask"),
                    "worker",
                    addr,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        )
    from distributed import Client

    deadline = time.time() + 60
    with Client(addr, timeout="30s") as c:
        while len(c.scheduler_info()["workers"]) < 2:
            assert time.time() < deadline, "dask workers did not register"
            time.sleep(0.2)
    try:
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
