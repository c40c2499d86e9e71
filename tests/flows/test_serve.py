"""`midicorpus serve` against a real Prefect server on 127.0.0.1 (temporary database).

Starts ``prefect server start`` and ``flows.serve.serve`` in their own process groups,
triggers deployments through the REST API, and checks the runs and the lake: the inbox
deployment ingests real MIDI, two runs of it never overlap, a run on a lake locked by
another process fails with the lock's message, and queued runs of one deployment run one
after the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corpus.lake import Lake

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MIDICORPUS_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    else:  # the leader exited: its children may still run
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; retried on 408/429/502/503 as Prefect's own client does (the server
        answers 503 when its SQLite database is busy; the request was not applied)."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(8):
            req = urllib.request.Request(
                self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    text = resp.read()
                return json.loads(text) if text else None
            except urllib.error.HTTPError as exc:
                if exc.code not in (408, 429, 502, 503) or attempt == 7:
                    raise
                wait = float(exc.headers.get("Retry-After") or 0) or min(8.0, 0.5 * 2**attempt)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def deployment(
        self, flow: str, name: str, timeout: float, proc: subprocess.Popen[bytes], log: Path
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self("GET", f"/deployments/name/{flow}/{name}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"deployment {flow}/{name} never registered:\n{_tail(log)}"
            time.sleep(0.5)

    def trigger(self, deployment_id: str, parameters: dict[str, Any] | None = None) -> str:
        return self("POST", f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters or {}})["id"]

    def wait(self, run_ids: list[str], timeout: float, log: Path) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            runs = [self("GET", f"/flow_runs/{rid}") for rid in run_ids]
            if all(r["state"]["type"] in FINAL for r in runs):
                return runs
            states = [r["state"]["name"] for r in runs]
            assert time.monotonic() < deadline, f"runs not finished after {timeout} s: {states}\n{_tail(log)}"
            time.sleep(0.5)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[Api]:
    port = _free_port()
    home = tmp_path / "prefect-server"
    log = tmp_path / "server.log"
    env = _env(
        home,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1",
        # a loaded 2-core CI machine: give SQLite statements time rather than a 503
        PREFECT_SERVER_DATABASE_TIMEOUT="60",
        PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT="30",
    )  # a queued run retries every second
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    api = Api(f"http://127.0.0.1:{port}/api")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"prefect server exited with {proc.returncode}:\n{_tail(log)}"
            try:
                api("GET", "/health")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, f"prefect server not up after 90 s:\n{_tail(log)}"
                time.sleep(0.5)
        yield api
    finally:
        _stop(proc)


def test_serve_runs_deployments_against_a_real_server(prefect_server: Api, data_dir: Path, tmp_path: Path) -> None:
    api = prefect_server
    (tmp_path / "midicorpus.toml").write_text(
        'lake = "lake"\nworkers = 0\nlock_wait_s = 0\n'
        '[crawl]\ncron = "0 2 * * *"\nbase_url = "http://127.0.0.1:9"\n'  # never reached in this test
        '[inbox]\npath = "inbox"\nevery_s = 3600\nsettle_s = 0\ncurate = false\n'
        '[snapshot]\ncron = "0 4 * * 0"\n'
    )
    lake, inbox = tmp_path / "lake", tmp_path / "inbox"
    log = tmp_path / "serve.log"
    env = _env(tmp_path / "prefect-serve", PREFECT_API_URL=api.url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    code = "import sys; from flows.serve import serve; sys.exit(serve(sys.argv[1]))"
    with open(log, "wb") as fh:
        serve = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "midicorpus.toml")],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        watch = api.deployment("inbox", "inbox-watch", 60, serve, log)
        assert watch["global_concurrency_limit"]["limit"] == 1 and watch["parameters"]["inbox"] == str(inbox)
        assert watch["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        nightly = api.deployment("pipeline", "mutopia-nightly", 10, serve, log)
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        assert [s["schedule"]["interval"] for s in watch["schedules"]] == [3600.0]

        # the inbox: a folder of real MIDI arrives; two runs are asked for at once
        shutil.copytree(data_dir / "midi" / "magenta", inbox / "magenta")
        runs = api.wait([api.trigger(watch["id"]), api.trigger(watch["id"])], 120, log)
        states = sorted(r["state"]["type"] for r in runs)
        assert states in (["CANCELLED", "COMPLETED"], ["COMPLETED", "COMPLETED"]), (states, _tail(log))
        # a run cancelled by the concurrency limit never ran (the server stamps it start = end)
        ran = sorted((r["start_time"], r["end_time"]) for r in runs if r["state"]["type"] == "COMPLETED")
        assert all(a[1] <= b[0] for a, b in zip(ran, ran[1:], strict=False)), (
            f"runs of one deployment overlapped: {ran}"
        )
        assert (inbox / "done" / "magenta").is_dir() and not (inbox / "magenta").exists()
        n = (
            Lake(lake)
            .query("SELECT count(*) n FROM pieces WHERE source = 'inbox' AND status = 'ok'")
            .to_pylist()[0]["n"]
        )
        assert n == 11

        # a second writer on the same lake: the run fails with the lock's message
        curate = api.deployment("curate", "curate", 10, serve, log)
        with Lake(lake).lock("test holder"):
            (run,) = api.wait([api.trigger(curate["id"])], 90, log)
        assert run["state"]["type"] == "FAILED"
        assert f"is locked by pid {os.getpid()} (test holder)" in run["state"]["message"], run["state"]["message"]

        # a deployment that queues: both runs complete, one after the other (the second from the cache)
        runs = api.wait([api.trigger(curate["id"]), api.trigger(curate["id"])], 120, log)
        assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], _tail(log)
        ran = sorted((r["start_time"], r["end_time"]) for r in runs)
        assert ran[0][1] <= ran[1][0], f"runs of one deployment overlapped: {ran}"
        assert (lake / "index" / "neardup").exists()

        # the weekly maintenance: compaction and expiry through Prefect, the lake answers the same
        before = Lake(lake).query("SELECT count(*) n FROM features").to_pylist()
        maint = api.deployment("maintain", "weekly-maintain", 10, serve, log)
        assert [s["schedule"]["cron"] for s in maint["schedules"]] == ["0 5 * * 0"]
        (run,) = api.wait([api.trigger(maint["id"], {"keep_days": 0})], 90, log)
        assert run["state"]["type"] == "COMPLETED", _tail(log)
        assert Lake(lake).query("SELECT count(*) n FROM features").to_pylist() == before
        assert len(Lake(lake).query("SELECT * FROM ducklake_snapshots('lake')")) <= 2
    finally:
        _stop(serve)

    # serve --once: start what is due (a run asked for while nothing served), wait for it, exit
    shutil.copytree(data_dir / "lakh" / "lmd_full", inbox / "lmd_full")
    rid = api.trigger(watch["id"])
    cmd = [
        sys.executable,
        "-c",
        code.replace("serve(sys.argv[1])", "serve(sys.argv[1], run_once=True)"),
        str(tmp_path / "midicorpus.toml"),
    ]
    with open(tmp_path / "once.log", "wb") as fh:
        once = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert once.wait(120) == 0, _tail(tmp_path / "once.log")
    finally:
        _stop(once)
    (run,) = api.wait([rid], 10, log)
    assert run["state"]["type"] == "COMPLETED" and (inbox / "done" / "lmd_full").is_dir()
    n = Lake(lake).query("SELECT count(*) n FROM pieces WHERE source = 'lakh'").to_pylist()[0]["n"]
    assert n == len(list((data_dir / "lakh" / "lmd_full").rglob("*.mid")))


def test_serve_check_and_missing_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows import serve as S
    from flows.config import ConfigError

    (tmp_path / "midicorpus.toml").write_text('[inbox]\npath = "drop"\nevery_s = 120\n[snapshot]\ncron = ""\n')
    assert S.serve(tmp_path / "midicorpus.toml", lake=tmp_path / "l", check=True) == 0
    out = capsys.readouterr().out
    assert (
        f"lake: {tmp_path / 'l'}" in out
        and f"inbox/inbox-watch: every 120 s: ingest new entries of {tmp_path / 'drop'}" in out
    )
    assert "snapshot/weekly-snapshot: no schedule" in out
    assert "maintain/weekly-maintain: cron '0 5 * * 0' (UTC): lake maintain, versions kept 7 days" in out
    monkeypatch.setattr(S, "_api_url", lambda: None)
    with pytest.raises(ConfigError, match="needs a Prefect API: run 'prefect server start'"):
        S.serve(tmp_path / "midicorpus.toml")
