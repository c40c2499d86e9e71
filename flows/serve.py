"""``midicorpus serve``: register the deployments with their schedules and serve them.

Deployments (flow/deployment names as the Prefect UI shows them):

- ``pipeline/mutopia-nightly`` (cron ``crawl.cron``): the Mutopia crawl, then curate and
  tokenize of what it brought.
- ``inbox/inbox-watch`` (every ``inbox.every_s`` seconds): each new archive or folder in
  ``inbox.path`` is ingested once, then moved to ``done/`` or ``failed/``.
- ``snapshot/weekly-snapshot`` (cron ``snapshot.cron``).
- ``maintain/weekly-maintain`` (cron ``maintain.cron``): ``lake maintain``, so a year of
  nightly runs leaves a lake whose file count and versions do not grow with the runs.
- ``ingest/ingest``, ``curate/curate``, ``tokenize/tokenize``: no schedule; run from the UI or
  the API with parameters.

Every deployment has ``concurrency_limit=1``: two runs of one deployment never run at once
(the inbox watch drops a run that would queue behind a running one; the others queue). Runs
of different deployments on one lake are serialized by the lake lock: a run waits up to
``lock_wait_s`` for it, then fails with the lock's message ("lake ... is locked by pid N
(...)"). The ``midicorpus`` CLI run by hand on the same lake takes the same lock.

``serve`` blocks, polling the Prefect API; each flow run is a subprocess. It needs a Prefect
API (``PREFECT_API_URL``): ``prefect server start`` or Prefect Cloud.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from corpus.lake import lake_location
from flows.config import ConfigError, ServeConfig, load_config

NIGHTLY = "mutopia-nightly"
INBOX = "inbox-watch"
WEEKLY = "weekly-snapshot"
MAINTAIN = "weekly-maintain"
TAGS = ["midicorpus"]


def _api_url() -> str | None:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def _schedule(cron: str | None, every_s: int | None, timezone: str) -> dict[str, Any]:
    from prefect.schedules import Cron, Interval

    if cron:
        return {"schedules": [Cron(cron, timezone=timezone)]}
    if every_s:
        return {"schedules": [Interval(dt.timedelta(seconds=every_s), timezone=timezone)]}
    return {}


def build_deployments(cfg: ServeConfig) -> list[Any]:
    """The ``RunnerDeployment`` objects for ``cfg`` (nothing is sent to the API)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    from flows.pipeline import inbox_flow, pipeline_flow
    from flows.stages import curate_flow, ingest_flow, maintain_flow, snapshot_flow, tokenize_flow

    queue = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    drop = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    common: dict[str, Any] = {"tags": TAGS, "entrypoint_type": EntrypointType.MODULE_PATH}
    lake, eng, wait = cfg.lake, cfg.engine_params(), cfg.lock_wait_s
    tok = cfg.tokenize
    crawl_opts = {
        k: v
        for k, v in (("base_url", cfg.crawl.base_url), ("max_pieces", cfg.crawl.max_pieces), ("delay", cfg.crawl.delay))
        if v is not None
    }
    snap = cfg.snapshot
    return [
        pipeline_flow.to_deployment(
            NIGHTLY,
            description="Nightly Mutopia crawl, then curate and tokenize of what it brought.",
            parameters={
                "lake": lake,
                "crawl": True,
                "crawl_options": crawl_opts,
                "curate": cfg.crawl.curate,
                "schemes": tok.schemes,
                "transpose": tok.transpose,
                "lock_wait_s": wait,
                **eng,
            },
            concurrency_limit=drop,
            **_schedule(cfg.crawl.cron, None, cfg.timezone),
            **common,
        ),
        inbox_flow.to_deployment(
            INBOX,
            description=f"Ingest each new Lakh / LPD / MIDI archive or folder in {cfg.inbox.path} once, then move it to done/ or failed/.",
            parameters={
                "lake": lake,
                "inbox": cfg.inbox.path,
                "settle_s": cfg.inbox.settle_s,
                "source": cfg.inbox.source,
                "license": cfg.inbox.license,
                "strict": cfg.inbox.strict,
                "curate": cfg.inbox.curate,
                "schemes": tok.schemes,
                "transpose": tok.transpose,
                "lock_wait_s": wait,
                **eng,
            },
            concurrency_limit=drop,
            **_schedule(None, cfg.inbox.every_s, cfg.timezone),
            **common,
        ),
        snapshot_flow.to_deployment(
            WEEKLY,
            description=f"Snapshot {snap.name!r} of the {snap.scheme} tokens (same content, same version).",
            parameters={
                "lake": lake,
                "name": snap.name,
                "scheme": snap.scheme,
                "where": snap.where,
                "transpose": snap.transpose,
                "split": snap.split,
                "seed": snap.seed,
                "max_seq_len": snap.max_seq_len,
                "lock_wait_s": wait,
            },
            concurrency_limit=queue,
            **_schedule(snap.cron, None, cfg.timezone),
            **common,
        ),
        maintain_flow.to_deployment(
            MAINTAIN,
            description="Compact the lake's small files, expire versions older than keep_days (not those snapshots use).",
            parameters={"lake": lake, "keep_days": cfg.maintain.keep_days, "lock_wait_s": wait},
            concurrency_limit=queue,
            **_schedule(cfg.maintain.cron, None, cfg.timezone),
            **common,
        ),
        ingest_flow.to_deployment(
            "ingest",
            description="Ingest a folder or archive (give kind and path).",
            parameters={"lake": lake, "lock_wait_s": wait, **eng},
            concurrency_limit=queue,
            **common,
        ),
        curate_flow.to_deployment(
            "curate",
            description="Curate what is new in the lake.",
            parameters={"lake": lake, "lock_wait_s": wait, **eng},
            concurrency_limit=queue,
            **common,
        ),
        tokenize_flow.to_deployment(
            "tokenize",
            description="Tokenize curated pieces.",
            parameters={"lake": lake, "schemes": tok.schemes, "transpose": tok.transpose, "lock_wait_s": wait, **eng},
            concurrency_limit=queue,
            **common,
        ),
    ]


def describe(cfg: ServeConfig) -> list[str]:
    """One line per deployment: name, schedule, what it does (``midicorpus serve --check``)."""
    tz = cfg.timezone
    workers = "one worker per core" if cfg.workers is None else f"{cfg.workers} workers"
    engine = cfg.scheduler or f"LocalCluster ({workers})"
    lines = [f"config: {cfg.source}", f"lake: {cfg.lake}", f"engine: {engine}", f"lock wait: {cfg.lock_wait_s:g} s"]
    lines.append(
        f"pipeline/{NIGHTLY}: {_when(cfg.crawl.cron, None, tz)}: Mutopia crawl"
        + (f", then curate + tokenize {','.join(cfg.tokenize.schemes)}" if cfg.crawl.curate else "")
    )
    lines.append(
        f"inbox/{INBOX}: {_when(None, cfg.inbox.every_s, tz)}: ingest new entries of {cfg.inbox.path}"
        + (" then curate + tokenize" if cfg.inbox.curate else "")
    )
    lines.append(
        f"snapshot/{WEEKLY}: {_when(cfg.snapshot.cron, None, tz)}: snapshot {cfg.snapshot.name} ({cfg.snapshot.scheme})"
    )
    lines.append(
        f"maintain/{MAINTAIN}: {_when(cfg.maintain.cron, None, tz)}: lake maintain, versions kept {cfg.maintain.keep_days:g} days"
    )
    lines.append("ingest/ingest, curate/curate, tokenize/tokenize: on demand")
    return lines


def _when(cron: str | None, every_s: int | None, tz: str) -> str:
    if cron:
        return f"cron '{cron}' ({tz})"
    if every_s:
        return f"every {every_s} s"
    return "no schedule"


def serve(
    config_path: str | os.PathLike[str] | None = None,
    lake: str | os.PathLike[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    run_once: bool = False,
    check: bool = False,
) -> int:
    """Register the deployments of the config (``flows.config``) and serve them until interrupted.

    ``lake`` / ``scheduler`` / ``workers`` override the config file (the CLI's ``--lake``,
    ``--scheduler``, ``--workers``). ``run_once``: start the runs that are due now (or within
    the next seconds), wait for them, and return (for a system cron or a test). ``check``: only
    validate the config and print what would be served. Raises :class:`ConfigError` on a bad
    config or a missing Prefect API.
    """
    cfg = load_config(config_path)
    if lake is not None:
        cfg.lake = lake_location(lake)
    if scheduler is not None:
        cfg.scheduler = scheduler
    if workers is not None:
        cfg.workers = workers
    if check:
        print("\n".join(describe(cfg)))
        return 0
    if not _api_url():
        raise ConfigError(
            "midicorpus serve needs a Prefect API: run 'prefect server start' and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or 'prefect cloud login')"
        )
    Path(cfg.inbox.path).mkdir(parents=True, exist_ok=True)
    deployments = build_deployments(cfg)
    for line in describe(cfg):
        print(line, flush=True)
    if run_once:
        import asyncio

        from prefect.runner import Runner

        async def once() -> None:
            runner = Runner(name="midicorpus-once", pause_on_shutdown=False)
            for d in deployments:
                await runner.aadd_deployment(d)
            await runner.start(run_once=True)

        asyncio.run(once())
        return 0
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, pause_on_shutdown=True, print_starting_message=False)
    return 0
