"""kill -9 in the middle of ingestion, then run again: the lake ends as an uninterrupted run leaves it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from corpus.lake import Lake
from tests.test_ingest import snapshot_tables

REPO = Path(__file__).resolve().parents[1]


def _cmd(lake: Path, src: Path) -> list[str]:
    return [sys.executable, "-m", "corpus.cli", "--lake", str(lake), "--workers", "1", "ingest", "dir", str(src), "--source", "s"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["MIDICORPUS_COMMIT_PIECES"] = "25"  # many small commits, so kills land between and inside them
    return env


def test_kill_minus_9_then_rerun_equals_uninterrupted(tmp_path: Path, data_dir: Path) -> None:
    src = data_dir
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, src), check=True, env=_env(), capture_output=True)
    expected = snapshot_tables(Lake(ref))

    rng = random.Random(1234)
    lake = tmp_path / "killed"
    kills = 0
    for _ in range(4):
        log = lake / "_log"
        before = len(list(log.glob("*.json"))) if log.is_dir() else 0
        target = before + rng.randint(1, 3)
        proc = subprocess.Popen(_cmd(lake, src), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # kill once the run has committed a few transactions, a random moment later
        while proc.poll() is None and (len(list(log.glob("*.json"))) if log.is_dir() else 0) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dask cluster and parser children
            kills += 1
        proc.wait()
    done = subprocess.run(_cmd(lake, src), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert kills >= 1
    assert snapshot_tables(Lake(lake)) == expected
    # no staging or temp files left visible
    assert not list((lake / "_staging").iterdir())
    assert not [p for p in (lake / "tables").rglob("*") if p.name.startswith(".")]
