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
