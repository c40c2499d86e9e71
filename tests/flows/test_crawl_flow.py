"""The Prefect crawl flow against the local imitation of Mutopia (ephemeral Prefect API)."""

from __future__ import annotations

from pathlib import Path

import pytest

import corpus.reasons
from corpus.lake import Lake
from corpus.sources import mutopia as M
from tests.mutopia_site import MutopiaSite


@pytest.fixture(autouse=True)
def new_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    for code, text in M.NEW_REASONS.items():
        if code not in corpus.reasons.REASONS:
            monkeypatch.setitem(corpus.reasons.REASONS, code, text)


def test_crawl_flow_ingests_and_resumes(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    from flows.crawl import CrawlFailed, crawl_mutopia_flow

    lake = tmp_path / "lake"
    with MutopiaSite(data_dir, ids=[37, 921, 980, 2021]) as site:
        out = crawl_mutopia_flow(str(lake), site.url, max_pieces=2, delay=0.05, workers=0, task_retries=0)
        assert out["crawl"]["pieces"] == 2 and "max_pieces" in out["crawl"]["stopped_because"]
        out = crawl_mutopia_flow(str(lake), site.url, delay=0.05, workers=0, task_retries=0)
        assert out["crawl"]["resumed"] and out["crawl"]["stopped_because"].startswith("done")
        paths = [p for p in site.paths() if p != "/robots.txt"]
        assert len(paths) == len(set(paths))  # the second run refetched nothing
        n = (
            Lake(lake)
            .query("SELECT count(*) n FROM pieces WHERE source = 'mutopia' AND status = 'ok'")
            .to_pylist()[0]["n"]
        )
        assert n == 6  # 3 single MIDIs + 3 zip members

        site.robots_status = 503  # the site is down: the task fails (and would be retried)
        with pytest.raises(CrawlFailed, match="robots.txt unavailable"):
            crawl_mutopia_flow(str(lake), site.url, delay=0.05, workers=0, task_retries=0)
