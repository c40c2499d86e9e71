"""The same job on a real `dask scheduler` + two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource
from tests.test_ingest import snapshot_tables

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path):
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )
    ]
    time.sleep(1.0)
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [str(bindir / "dask"), "worker", addr, "--nthreads", "1", "--nworkers", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
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


@pytest.mark.cluster
def test_external_cluster_gives_the_same_tables(dask_cluster: str, tmp_path: Path, data_dir: Path) -> None:
    src = data_dir / "midi"
    local, remote = Lake(tmp_path / "local"), Lake(tmp_path / "remote")
    with local.lock(), Engine(workers=2) as e:
        ingest(local, DirSource(src, name="m"), e, IngestConfig())
    with remote.lock(), Engine(scheduler=dask_cluster) as e:
        s = ingest(remote, DirSource(src, name="m"), e, IngestConfig())
        assert e.n_workers == 2
    assert s.inputs > 150
    assert snapshot_tables(local) == snapshot_tables(remote)


def test_unreachable_scheduler_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    port = _free_port()
    r = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(tmp_path / "l"), "--scheduler", f"tcp://127.0.0.1:{port}",
         "ingest", "dir", str(data_dir / "midi/magenta")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "cannot reach the Dask scheduler" in r.stderr
