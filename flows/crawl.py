"""The Mutopia crawl as a Prefect 3 flow: crawl + ingest in one task, then a summary.

All HTTP happens inside the one ``crawl-mutopia`` task, through one
:class:`corpus.sources.mutopia.MutopiaCrawler`, which sends one request at a time with at
least ``delay`` seconds between request starts. That is the host's shared rate limit: no
other task talks to the site, so no cross-task limiter (Prefect global concurrency limit)
is needed. Do not run two crawl flows on one lake at once: the second fails on the lake
lock before it sends anything.

Fetching and ingesting share the task because the crawler streams bytes straight into
``ingest`` (nothing large passes between tasks). Task retries are safe: the crawl resumes
from its state in the lake and refetches nothing it already has.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from corpus.sources.mutopia import DEFAULT_BASE_URL, DEFAULT_DELAY, DEFAULT_USER_AGENT

# stop reasons worth a retry later (the site was down or refused us for a while)
RETRYABLE_STOPS = ("circuit breaker", "robots.txt unavailable", "server asked to retry after")


class CrawlFailed(RuntimeError):
    """The crawl stopped for a reason that a later retry may not have (see ``RETRYABLE_STOPS``)."""


@task(name="crawl-mutopia", retries=2, retry_delay_seconds=300, log_prints=False)
def crawl_and_ingest(
    lake: str,
    base_url: str,
    max_pieces: int | None,
    delay: float,
    user_agent: str,
    workers: int | None,
    crawler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Crawl Mutopia politely and ingest every MIDI file into the lake (holds the lake lock)."""
    from corpus.engine import Engine
    from corpus.lake import Lake
    from corpus.sources.mutopia import crawl

    logger = get_run_logger()
    lk = Lake(lake)
    with lk.lock("crawl mutopia (prefect)"), Engine(workers=workers) as engine:
        summary, stats = crawl(
            lk,
            engine,
            base_url=base_url,
            max_pieces=max_pieces,
            delay=delay,
            user_agent=user_agent,
            **(crawler_options or {}),
        )
    logger.info(summary.line())
    logger.info(stats.line())
    if stats.stopped_because.startswith(RETRYABLE_STOPS):
        raise CrawlFailed(f"crawl stopped: {stats.stopped_because} ({summary.line()} committed)")
    return {"ingest": summary.as_dict(), "crawl": stats.as_dict()}


@flow(name="crawl-mutopia", log_prints=False)
def crawl_mutopia_flow(
    lake: str = "lake",
    base_url: str = DEFAULT_BASE_URL,
    max_pieces: int | None = None,
    delay: float = DEFAULT_DELAY,
    user_agent: str = DEFAULT_USER_AGENT,
    workers: int | None = None,
    task_retries: int = 2,
    retry_delay_seconds: float = 300,
    crawler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Nightly Mutopia crawl: fetch what is new or changed, ingest it, return both summaries."""
    runner = crawl_and_ingest.with_options(retries=task_retries, retry_delay_seconds=retry_delay_seconds)
    return runner(str(lake), base_url, max_pieces, delay, user_agent, workers, crawler_options)
