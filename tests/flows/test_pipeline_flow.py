"""Stage flows, the pipeline and the inbox flow on real MIDI (ephemeral Prefect API), kind detection, config."""

from __future__ import annotations

import shutil
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from corpus.lake import Lake, LakeLocked
from flows.config import ConfigError, from_mapping, load_config


def _count(lake: Path, sql: str) -> int:
    return Lake(lake).query(sql).to_pylist()[0]["n"]


# ------------------------------------------------------------------ kind detection
def test_detect_kind_on_real_layouts(data_dir: Path, tmp_path: Path) -> None:
    from flows.pipeline import detect_kind

    assert detect_kind(data_dir / "lakh" / "lmd_full") == "lakh"
    assert detect_kind(data_dir / "lpd") == "lpd"
    npz = next((data_dir / "lpd").rglob("*.npz"))
    assert detect_kind(npz) == "lpd"
    assert detect_kind(data_dir / "midi" / "magenta") == "dir"
    # archives, by their members (a neutral archive name)
    with tarfile.open(tmp_path / "upload1.tar.gz", "w:gz") as tf:
        tf.add(data_dir / "lakh" / "lmd_full", arcname="lmd_full")
    assert detect_kind(tmp_path / "upload1.tar.gz") == "lakh"
    with zipfile.ZipFile(tmp_path / "upload2.zip", "w") as zf:
        for p in sorted((data_dir / "midi" / "magenta").iterdir()):
            zf.write(p, f"magenta/{p.name}")
    assert detect_kind(tmp_path / "upload2.zip") == "dir"
    with zipfile.ZipFile(tmp_path / "upload3.zip", "w") as zf:
        zf.write(npz, f"x/{npz.name}")
    assert detect_kind(tmp_path / "upload3.zip") == "lpd"
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    assert detect_kind(tmp_path / "broken.tar.gz") == "dir"  # ingested as dir: an archive_corrupt reject


# ------------------------------------------------------------------ config
def test_config_file_and_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIDICORPUS_CONFIG", raising=False)
    monkeypatch.delenv("MIDICORPUS_LAKE", raising=False)
    monkeypatch.delenv("MIDICORPUS_SCHEDULER", raising=False)
    cfg = load_config(cwd=tmp_path)  # no file: defaults, relative to the working directory
    assert cfg.source == "defaults" and cfg.lake == str(tmp_path / "lake") and cfg.crawl.cron == "0 2 * * *"
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.midicorpus]\nlake = "data/lake"\nworkers = 0\n'
        '[tool.midicorpus.inbox]\npath = "in"\nevery_s = 60\n[tool.midicorpus.snapshot]\ncron = ""\n'
    )
    cfg = load_config(cwd=tmp_path)
    assert cfg.lake == str(tmp_path / "data" / "lake") and cfg.inbox.path == str(tmp_path / "in")
    assert cfg.workers == 0 and cfg.inbox.every_s == 60 and cfg.snapshot.cron == ""
    (tmp_path / "midicorpus.toml").write_text('timezone = "Europe/Paris"\n[crawl]\ncron = "30 1 * * *"\n')
    cfg = load_config(cwd=tmp_path)  # midicorpus.toml wins over pyproject
    assert cfg.timezone == "Europe/Paris" and cfg.crawl.cron == "30 1 * * *" and cfg.workers is None


@pytest.mark.parametrize(
    "table, message",
    [
        ({"crawl": {"cron": "61 * * * *"}}, "crawl.cron must be a cron expression .* got '61 \\* \\* \\* \\*'"),
        ({"timezone": "Mars/Olympus"}, "timezone must be an IANA name .* got 'Mars/Olympus'"),
        ({"inbox": {"every": 5}}, "unknown key 'inbox.every'; known: inbox.path"),
        ({"workers": "two"}, "workers must be a whole number, got 'two'"),
        ({"tokenize": {"schemes": ["remy"]}}, "unknown scheme 'remy'"),
        ({"scheduler": "10.0.0.5:8786"}, "scheduler must be a Dask address"),
        ({"snapshot": {"split": [0.5, 0.5]}}, "snapshot.split must be three fractions"),
    ],
    ids=["bad-cron", "bad-timezone", "unknown-key", "bad-type", "unknown-scheme", "bad-scheduler", "bad-split"],
)
def test_config_errors_name_the_value(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(table, "midicorpus.toml")


# ------------------------------------------------------------------ flows
def test_pipeline_then_cached_rerun(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    from flows.pipeline import pipeline_flow
    from flows.stages import snapshot_flow

    lake = tmp_path / "lake"
    snap = {"name": "t", "scheme": "remi", "seed": 1}
    inputs = [{"kind": "dir", "path": str(data_dir / "midi" / "magenta"), "source": "magenta"}]
    out = pipeline_flow(str(lake), inputs=inputs, workers=0, snapshot=snap)
    assert out["ingest"][0]["ok"] == 11 and not out["curate"]["cached"] and out["curate"]["analysed"] >= 1
    assert out["tokenize"]["schemes"]["remi"]["pieces"] >= 1 and out["snapshot"]["created"]
    assert _count(lake, "SELECT count(*) n FROM pieces WHERE source = 'magenta' AND status = 'ok'") == 11

    again = pipeline_flow(str(lake), inputs=inputs, workers=0, snapshot=snap)
    assert again["ingest"][0]["unchanged"] == 11
    assert again["curate"]["cached"] and again["tokenize"]["cached"] and again["snapshot"]["cached"]
    assert again["snapshot"]["version"] == out["snapshot"]["version"]

    shutil.rmtree(out["snapshot"]["path"])  # a cached result whose output is gone runs again
    rebuilt = snapshot_flow(str(lake), **snap)
    assert not rebuilt["cached"] and rebuilt["created"] and rebuilt["version"] == out["snapshot"]["version"]


def test_locked_lake_fails_with_the_lock_message_or_waits(
    prefect_harness: None, data_dir: Path, tmp_path: Path
) -> None:
    from flows.stages import ingest_flow

    lake = tmp_path / "lake"
    magenta = str(data_dir / "midi" / "magenta")
    with Lake(lake).lock("test holder"), pytest.raises(LakeLocked, match=r"is locked by pid \d+ \(test holder\)"):
        ingest_flow(str(lake), "dir", magenta, workers=0)

    holder = Lake(lake)
    held = threading.Event()

    def hold() -> None:
        with holder.lock("short holder"):
            held.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    from flows import stages

    old, stages.LOCK_POLL_S = stages.LOCK_POLL_S, 0.2
    try:
        out = ingest_flow(str(lake), "dir", magenta, workers=0, lock_wait_s=30)
    finally:
        stages.LOCK_POLL_S = old
        t.join()
    assert out["ok"] == 11


def test_inbox_ingests_once_and_moves_aside(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    from flows.pipeline import inbox_flow

    lake, inbox = tmp_path / "lake", tmp_path / "inbox"
    inbox.mkdir()
    shutil.copytree(data_dir / "midi" / "magenta", inbox / "magenta")
    shutil.copytree(data_dir / "lakh" / "lmd_full", inbox / "lmd_full")
    (inbox / "notes.pdf").write_bytes(b"%PDF-1.4")
    (inbox / "big.tar.gz.part").write_bytes(b"")  # still downloading: left alone
    out = inbox_flow(str(lake), str(inbox), settle_s=0, curate=False, workers=0)
    assert [(d["name"], d["kind"]) for d in out["done"]] == [("lmd_full", "lakh"), ("magenta", "dir")]
    assert [f["name"] for f in out["failed"]] == ["notes.pdf"]
    assert sorted(p.name for p in inbox.iterdir()) == ["big.tar.gz.part", "done", "failed"]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["lmd_full", "magenta"]
    assert "not a folder, an archive" in (inbox / "failed" / "notes.pdf.error.txt").read_text()
    n_lakh = len(list((data_dir / "lakh" / "lmd_full").rglob("*.mid")))
    assert _count(lake, "SELECT count(*) n FROM pieces WHERE source = 'inbox'") == 11
    assert _count(lake, "SELECT count(*) n FROM pieces WHERE source = 'lakh'") == n_lakh

    out = inbox_flow(str(lake), str(inbox), settle_s=0, curate=False, workers=0)  # nothing new
    assert out == {"done": [], "failed": [], "waiting": []}


def test_nightly_pipeline_crawls_then_curates_and_tokenizes(
    prefect_harness: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corpus.reasons
    from corpus.sources import mutopia as M
    from flows.pipeline import pipeline_flow
    from tests.mutopia_site import MutopiaSite

    for code, text in getattr(M, "NEW_REASONS", {}).items():
        if code not in corpus.reasons.REASONS:
            monkeypatch.setitem(corpus.reasons.REASONS, code, text)
    lake = tmp_path / "lake"
    with MutopiaSite(data_dir, ids=[37, 921]) as site:
        opts = {"base_url": site.url, "delay": 0.05, "task_retries": 0}
        out = pipeline_flow(str(lake), crawl=True, crawl_options=opts, workers=0, schemes=["remi"])
    assert out["crawl"]["crawl"]["pieces"] == 2 and out["crawl"]["ingest"]["ok"] >= 2
    assert out["curate"]["analysed"] == out["crawl"]["ingest"]["ok"]  # what the crawl brought
    assert out["tokenize"]["schemes"]["remi"]["pieces"] >= 1


def test_pipeline_on_an_object_store_lake_then_cached_rerun(
    prefect_harness: None, s3_lake_url: str, data_dir: Path
) -> None:
    """The same flows with the lake in a bucket (moto's S3 server on 127.0.0.1)."""
    from flows.pipeline import pipeline_flow

    snap = {"name": "t", "scheme": "remi", "seed": 1}
    inputs = [{"kind": "dir", "path": str(data_dir / "midi" / "magenta"), "source": "magenta"}]
    out = pipeline_flow(s3_lake_url, inputs=inputs, workers=0, snapshot=snap)
    assert out["ingest"][0]["ok"] == 11 and out["snapshot"]["created"]
    assert out["snapshot"]["path"] == f"{s3_lake_url}/snapshots/t/{out['snapshot']['version']}"
    lake = Lake(s3_lake_url)
    assert (
        lake.query("SELECT count(*) n FROM tokens").to_pylist()[0]["n"] == out["tokenize"]["schemes"]["remi"]["pieces"]
    )
    again = pipeline_flow(s3_lake_url, inputs=inputs, workers=0, snapshot=snap)
    assert again["curate"]["cached"] and again["tokenize"]["cached"] and again["snapshot"]["cached"]
    lake.remove(f"snapshots/t/{out['snapshot']['version']}/manifest.json")  # the output is gone: it runs again
    rebuilt = pipeline_flow(s3_lake_url, inputs=inputs, workers=0, snapshot=snap)
    assert not rebuilt["snapshot"]["cached"] and rebuilt["snapshot"]["version"] == out["snapshot"]["version"]
