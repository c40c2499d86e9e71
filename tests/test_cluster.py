"""The same job on a real `dask scheduler` + two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
        [
            sys.executable,
            "-m",
            "corpus.cli",
            "--lake",
            str(tmp_path / "l"),
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
            "ingest",
            "dir",
            str(data_dir / "midi/magenta"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("midicorpus:")]  # progress lines come before
    assert (
        len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0] and "cannot reach the Dask scheduler" in errors[0]
    )
    assert "Traceback" not in r.stderr


def _pipeline(lake: Path, where: list[str], src: Path) -> str:
    """ingest, curate, tokenize REMI and snapshot create through the CLI; the snapshot's version."""
    from tests.test_faults import _env

    cli = [sys.executable, "-m", "corpus.cli", "--lake", str(lake), *where]
    for args in (
        ["ingest", "dir", str(src), "--source", "m"],
        ["curate"],
        ["tokenize", "--scheme", "remi"],
        ["snapshot", "create", "s", "--scheme", "remi"],
    ):
        r = subprocess.run([*cli, *args], env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (args, r.stderr)
    (row,) = Lake(lake).query("SELECT version FROM snapshots").to_pylist()
    return str(row["version"])


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_the_whole_pipeline_on_a_real_cluster_gives_the_local_lake_and_snapshot(
    dask_cluster: str, tmp_path: Path, data_dir: Path
) -> None:
    """Ingest, curate, tokenize and snapshot create with --scheduler (a `dask scheduler` and two
    `dask worker` processes) write the tables and the snapshot bytes of a local run."""
    from tests.test_faults import stage_tables

    src = data_dir / "midi"
    local = _pipeline(tmp_path / "local", ["--workers", "2"], src)
    remote = _pipeline(tmp_path / "remote", ["--scheduler", dask_cluster], src)
    assert remote == local
    assert stage_tables(Lake(tmp_path / "remote")) == stage_tables(Lake(tmp_path / "local"))
