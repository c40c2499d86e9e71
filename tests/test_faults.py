"""Faults, each test asserting nothing was lost.

kill -9 in the middle of ingest, curate and tokenize, then run again: the lake ends as an
uninterrupted run leaves it. A Dask worker killed mid-run: the run finishes, no piece lost
or duplicated. (A full disk and an unwritable lake: tests/test_faults_disk.py.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corpus.engine import Engine
from corpus.lake import Lake, LakeError
from tests.test_ingest import snapshot_tables

REPO = Path(__file__).resolve().parents[1]


def _cmd(lake: Path, src: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "corpus.cli",
        "--lake",
        str(lake),
        "--workers",
        "1",
        "ingest",
        "dir",
        str(src),
        "--source",
        "s",
    ]


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
        target = _n_commits(lake) + rng.randint(1, 3)
        proc = subprocess.Popen(
            _cmd(lake, src), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        # kill once the run has committed a few transactions, a random moment later
        while proc.poll() is None and _n_commits(lake) < target:
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


# ------------------------------------------------------------------ curate and tokenize killed
# The CLI commits curate and tokenize work every 1000-2000 rows, i.e. once on the shared data;
# the same library calls in a child process with tiny commits put many commit points in reach.
STAGE_DRIVER = """
import sys
from corpus.engine import Engine
from corpus.lake import Lake

stage, root = sys.argv[1], sys.argv[2]
lake = Lake(root)
with lake.lock(stage), Engine(workers=1) as engine:
    if stage == "curate":
        from corpus.curate import curate
        curate(lake, engine, batch_size=4, commit_every=6)
    else:
        from corpus.tokenize.stage import tokenize
        tokenize(lake, engine, ["remi"], batch_size=4, commit_every=6)
"""

STAGE_KEYS = {
    "piece_analysis": "SELECT * FROM piece_analysis_t",
    "track_texture": "SELECT * FROM track_texture_t",
    "dedup_latest": "SELECT piece_id, dedup_cluster, is_representative, threshold FROM dedup_latest",
    "tokens": "SELECT scheme, tokenizer_hash, piece_id, transpose, n_tokens, n_sequences, seq_lengths, hash(ids) FROM tokens",
    "tokenizers": "SELECT scheme, tokenizer_hash, tokenization, vocab_size FROM tokenizers",
    "rejects": "SELECT stage, piece_id, reason, detail, scheme, tokenizer_hash, transpose FROM rejects",
}

# each row at most once: a replayed or doubled commit shows here even when a reference has the same bug
UNIQUE_KEYS = {
    "piece_analysis_t": "piece_id",
    "track_texture_t": "piece_id, track_index",
    "dedup_latest": "piece_id",
    "tokens": "scheme, tokenizer_hash, piece_id, transpose",
    "tokenizers": "scheme, tokenizer_hash",
    "pieces": "source, source_uri",
}


def stage_tables(lake: Lake) -> dict[str, list[tuple]]:
    """Curate and tokenize outputs, sorted, without run ids and times; plus the ingest tables."""
    con = lake.connect()
    try:
        for view, key in UNIQUE_KEYS.items():
            (dups,) = con.execute(f"SELECT count(*) - count(DISTINCT ({key})) FROM {view}").fetchone()
            assert dups == 0, f"{dups} duplicate rows in {view}"
        out = {name: sorted(con.execute(sql).fetchall(), key=repr) for name, sql in STAGE_KEYS.items()}
    finally:
        con.close()
    return {**out, **snapshot_tables(lake)}


def _cli(lake: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "corpus.cli", "--lake", str(lake), "--workers", "1", *args]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Uninterrupted CLI runs: the shared data ingested, then curated, then tokenized (REMI)."""
    root = tmp_path_factory.mktemp("refs")
    env = {k: v for k, v in _env().items() if k != "MIDICORPUS_COMMIT_PIECES"}
    _run(_cli(root / "ingested", "ingest", "dir", str(data_dir), "--source", "s"), env)
    shutil.copytree(root / "ingested", root / "curated")
    _run(_cli(root / "curated", "curate"), env)
    shutil.copytree(root / "curated", root / "tokenized")
    _run(_cli(root / "tokenized", "tokenize", "--scheme", "remi"), env)
    return {"ingested": root / "ingested", "curated": root / "curated", "tokenized": root / "tokenized"}


def _n_commits(lake: Path) -> int:
    """Data transactions committed so far (read from the catalog while a writer runs)."""
    try:
        return len(Lake(lake).commits())
    except LakeError:  # the catalog is being created
        return 0


def _kill_stage_repeatedly(stage: str, lake: Path, seed: int, rounds: int = 4) -> int:
    """Run the stage with tiny commits and kill -9 its process group a random moment after a few commits."""
    rng = random.Random(seed)
    kills = 0
    for _ in range(rounds):
        target = _n_commits(lake) + rng.randint(1, 5)
        proc = subprocess.Popen(
            [sys.executable, "-c", STAGE_DRIVER, stage, str(lake)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while proc.poll() is None and _n_commits(lake) < target and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Dask cluster, everything
            kills += 1
        proc.wait()
        # readable right after the kill, before any writer recovers it (even at the commit point)
        Lake(lake).query("SELECT count(*) FROM features").to_pylist()
    return kills


def test_kill_minus_9_curate_then_rerun_equals_uninterrupted(refs: dict[str, Path], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(refs["ingested"], lake)
    commits0 = _n_commits(lake)
    kills = _kill_stage_repeatedly("curate", lake, seed=7)
    assert kills >= 1 and _n_commits(lake) > commits0 + 1  # killed, after some commits landed
    _run(_cli(lake, "curate"))
    assert stage_tables(Lake(lake)) == stage_tables(Lake(refs["curated"]))
    assert not list((lake / "_staging").iterdir())


def test_kill_minus_9_tokenize_then_rerun_equals_uninterrupted(refs: dict[str, Path], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(refs["curated"], lake)
    commits0 = _n_commits(lake)
    kills = _kill_stage_repeatedly("tokenize", lake, seed=11)
    assert kills >= 1 and _n_commits(lake) > commits0 + 1
    _run(_cli(lake, "tokenize", "--scheme", "remi"))
    assert stage_tables(Lake(lake)) == stage_tables(Lake(refs["tokenized"]))
    assert not list((lake / "_staging").iterdir())


KILL_AT_COMMIT_POINT = """
import os, signal, sys
from corpus import cli
from corpus.lake import Transaction

commit = Transaction.commit

def killed(self):  # kill -9 the moment DuckLake's COMMIT returned, before the command goes on
    commit(self)
    os.kill(os.getpid(), signal.SIGKILL)

Transaction.commit = killed
sys.exit(cli.main(sys.argv[1:]))
"""


def test_killed_right_after_a_commit_keeps_it_and_the_rerun_finishes(
    refs: dict[str, Path], tmp_path: Path, data_dir: Path
) -> None:
    lake = tmp_path / "lake"
    args = ["--lake", str(lake), "--workers", "0", "ingest", "dir", str(data_dir), "--source", "s"]
    env = dict(_env(), MIDICORPUS_COMMIT_PIECES="100")
    r = subprocess.run([sys.executable, "-c", KILL_AT_COMMIT_POINT, *args], env=env, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    (record,) = Lake(lake).commits()
    # a reader sees exactly the committed rows, with no writer around
    q = _run(
        [
            sys.executable,
            "-m",
            "corpus.cli",
            "--lake",
            str(lake),
            "sql",
            "SELECT count(*) AS n FROM pieces",
            "--format",
            "json",
        ]
    )
    assert json.loads(q.stdout) == [{"n": record["tables"]["pieces"]}]
    _run([sys.executable, "-m", "corpus.cli", *args], env)  # the next writer takes the lock and finishes
    assert snapshot_tables(Lake(lake)) == snapshot_tables(Lake(refs["ingested"]))


# ------------------------------------------------------------------ a Dask worker killed mid-run
def _kill_one_worker_after(engine: Engine, n_results: int) -> tuple[Callable[[object], None], list[int]]:
    """A progress callback that SIGKILLs one Dask worker process once ``n_results`` batches are back."""
    seen = [0]
    killed: list[int] = []

    def progress(_summary: object) -> None:
        seen[0] += 1
        if seen[0] == n_results and not killed:
            pids = engine.client.run(os.getpid)  # {worker address: pid of the worker process}
            assert len(pids) == 2
            pid = sorted(pids.values())[0]
            os.kill(pid, signal.SIGKILL)  # its nanny starts a new one; the scheduler reschedules its tasks
            killed.append(pid)

    return progress, killed


def test_dask_worker_killed_mid_ingest(refs: dict[str, Path], tmp_path: Path, data_dir: Path) -> None:
    from corpus.ingest import IngestConfig, ingest
    from corpus.sources.folder import DirSource

    lake = Lake(tmp_path / "lake")
    with lake.lock("test"), Engine(workers=2) as engine:
        progress, killed = _kill_one_worker_after(engine, 3)
        s = ingest(
            lake,
            DirSource(data_dir, name="s"),
            engine,
            IngestConfig(batch_files=4, commit_pieces=50),
            progress=progress,
        )
        assert killed and killed[0] not in engine.client.run(os.getpid).values()
    assert s.inputs == s.ok + s.rejected + s.duplicate and s.unchanged == 0
    assert stage_tables(lake) == stage_tables(Lake(refs["ingested"]))


def test_dask_worker_killed_mid_tokenize(refs: dict[str, Path], tmp_path: Path) -> None:
    from corpus.tokenize.stage import tokenize

    root = tmp_path / "lake"
    shutil.copytree(refs["curated"], root)
    lake = Lake(root)
    with lake.lock("test"), Engine(workers=2) as engine:
        progress, killed = _kill_one_worker_after(engine, 4)
        s = tokenize(lake, engine, ["remi"], batch_size=4, commit_every=40, progress=progress)
        assert killed and killed[0] not in engine.client.run(os.getpid).values()
    (remi,) = s.schemes
    assert remi.pieces + remi.rejected == len(
        Lake(refs["curated"]).query("SELECT piece_id FROM features WHERE texture IS NOT NULL")
    )
    assert stage_tables(lake) == stage_tables(Lake(refs["tokenized"]))
