"""`midicorpus train` as a person meets it: rounded figures, the run inside the lake, a re-run
that says it skipped, JSON for scripts, and a damaged snapshot refused before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.train import DATA, build_test_lake  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), MIDICORPUS_DEBUG="")
SMALL = ("--steps", "3", "--batch-size", "2", "--seq-len", "32", "--device", "cpu")


def cli(lake: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(lake), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    root = tmp_path_factory.mktemp("traincli") / "lake"
    build_test_lake(root, ("remi",))
    r = cli(root, "snapshot", "create", "s", "--scheme", "remi", "--split", "0.6,0.2,0.2")
    assert r.returncode == 0, r.stderr
    return root


def test_train_prints_rounded_figures_and_runs_inside_the_lake(lake: Path, tmp_path: Path) -> None:
    r = cli(lake, "train", "--snapshot", "s", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert re.fullmatch(
        r"train: cpu, 3 steps, loss \d+\.\d{3} -> \d+\.\d{3}, valid (\d+\.\d{3}|-), [\d,]+ tokens/s, data wait \d+\.\d %",
        first,
    ), first
    runs = list((lake / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file() and not (tmp_path / "runs").exists()
    assert r.stdout.splitlines()[1] == f"train: run in {runs[0]} (metrics.json, checkpoint.pt, generated.mid)"
    again = cli(lake, "train", "--snapshot", "s", *SMALL, cwd=tmp_path)
    assert again.returncode == 0 and "0 tokens/s" not in again.stdout
    assert again.stdout.startswith(f"train: skipped, the run at {runs[0]} already has 3 steps (loss ")
    js = cli(lake, "train", "--snapshot", "s", *SMALL, "--format", "json", cwd=tmp_path)
    m = json.loads(js.stdout)
    assert js.returncode == 0 and m["steps"] == 3 and m["steps_this_run"] == 0 and m["out"] == str(runs[0])


def test_report_defaults_into_the_lake(lake: Path, tmp_path: Path) -> None:
    r = cli(lake, "report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"report: {lake / 'report' / 'index.html'}\n" and not (tmp_path / "report").exists()


def test_train_on_a_snapshot_with_a_missing_shard_fails_up_front(lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy, ignore=shutil.ignore_patterns("runs", "report"))
    (version,) = [p for p in (copy / "snapshots" / "s").iterdir() if p.is_dir()]
    (version / "valid" / "index.npy").unlink()
    r = cli(copy, "train", "--snapshot", "s", *SMALL, "--out", str(tmp_path / "run"))
    ref = f"s@{version.name}"
    assert r.returncode == 2
    assert (
        r.stderr
        == f"midicorpus: error: snapshot {ref} is missing valid/index.npy; check it with: midicorpus snapshot verify {ref}\n"
    )
    assert not (tmp_path / "run").exists()  # no checkpoint, no folder: nothing was trained
    v = cli(copy, "snapshot", "verify", ref)
    assert v.returncode == 1 and "valid/index.npy" in v.stdout
