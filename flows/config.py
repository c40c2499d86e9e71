"""The one config file of ``midicorpus serve``: schedules, the inbox, the lake, the cluster.

Looked up in this order: the path given (``--config``), ``$MIDICORPUS_CONFIG``,
``./midicorpus.toml``, then ``[tool.midicorpus]`` in ``./pyproject.toml``; no file at all
means the defaults below. ``midicorpus.toml`` holds the same keys at its top level as
``[tool.midicorpus]`` does in pyproject (there, sections are ``[tool.midicorpus.crawl]``...)::

    lake = "/srv/midicorpus/lake"        # relative paths are relative to the config file
    scheduler = "tcp://10.0.0.5:8786"    # Dask for the heavy stages (default: a LocalCluster)
    workers = 4                          # LocalCluster worker processes when no scheduler
    timezone = "UTC"                     # of every cron below
    lock_wait_s = 600                    # a run waits this long for the lake lock, then fails

    [crawl]      # nightly Mutopia crawl, then curate + tokenize of what it brought
    cron = "0 2 * * *"
    [inbox]      # folder watched for Lakh / LPD / MIDI archives
    path = "/srv/midicorpus/inbox"
    every_s = 300
    [tokenize]
    schemes = ["remi"]
    [snapshot]   # weekly snapshot
    cron = "0 4 * * 0"
    name = "weekly"
    scheme = "remi"
    [maintain]   # weekly lake maintenance: compaction, expiry of old versions
    cron = "0 5 * * 0"
    keep_days = 7

An empty ``cron`` (``cron = ""``) or ``every_s = 0`` registers the deployment without a
schedule (run it from the UI or the API). Every bad value is reported in one line that names
the key, the value and what is accepted.

This module does not import Prefect at import time (``midicorpus --help`` stays fast).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus.lake import lake_location

ENV_CONFIG = "MIDICORPUS_CONFIG"
FILE_NAME = "midicorpus.toml"

DEFAULT_CRAWL_CRON = "0 2 * * *"  # every night at 02:00
DEFAULT_SNAPSHOT_CRON = "0 4 * * 0"  # Sundays at 04:00
DEFAULT_MAINTAIN_CRON = "0 5 * * 0"  # Sundays at 05:00, after the snapshot
DEFAULT_INBOX_EVERY_S = 300
DEFAULT_SETTLE_S = 60  # an inbox entry changed this recently is still being copied: next run
DEFAULT_LOCK_WAIT_S = 600


class ConfigError(ValueError):
    """A bad config file or value (one line: the file, the key, the value, what is accepted)."""


@dataclass
class CrawlConfig:
    cron: str = DEFAULT_CRAWL_CRON
    base_url: str | None = None  # default: corpus.sources.mutopia.DEFAULT_BASE_URL
    max_pieces: int | None = None
    delay: float | None = None  # seconds between requests (default: the crawler's, 1 s)
    curate: bool = True  # curate + tokenize what the crawl brought


@dataclass
class InboxConfig:
    path: str = "inbox"
    every_s: int = DEFAULT_INBOX_EVERY_S
    settle_s: float = DEFAULT_SETTLE_S
    source: str = "inbox"  # `pieces.source` of plain MIDI folders / archives (Lakh and LPD have their own)
    license: str | None = None  # licence recorded for plain MIDI folders / archives
    strict: bool = False  # reject spec violations (see `ingest --strict`)
    curate: bool = True  # curate + tokenize what was ingested


@dataclass
class TokenizeConfig:
    schemes: list[str] = field(default_factory=lambda: ["remi"])
    transpose: str = "none"


@dataclass
class SnapshotConfig:
    cron: str = DEFAULT_SNAPSHOT_CRON
    name: str = "weekly"
    scheme: str = "remi"
    where: str | None = None
    transpose: str = "none"
    split: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    seed: int = 0
    max_seq_len: int | None = None


@dataclass
class MaintainConfig:
    cron: str = DEFAULT_MAINTAIN_CRON
    keep_days: float = 7.0  # lake versions younger than this stay queryable (sql --at)


@dataclass
class ServeConfig:
    lake: str = "lake"
    scheduler: str | None = None
    workers: int | None = None
    timezone: str = "UTC"
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    source: str = "defaults"  # where the values came from (for messages)

    def engine_params(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "workers": self.workers}


_SECTIONS = {
    "crawl": CrawlConfig,
    "inbox": InboxConfig,
    "tokenize": TokenizeConfig,
    "snapshot": SnapshotConfig,
    "maintain": MaintainConfig,
}


def find_config(
    path: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> tuple[Path | None, dict[str, Any]]:
    """The config file to use and its midicorpus table (``{}`` when there is none)."""
    here = Path(cwd) if cwd is not None else Path.cwd()
    explicit = path or os.environ.get(ENV_CONFIG) or None
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"no such config file: {str(explicit)!r}")
        return p, _table(p, required=p.name == "pyproject.toml")
    if (here / FILE_NAME).is_file():
        return here / FILE_NAME, _table(here / FILE_NAME)
    if (here / "pyproject.toml").is_file():
        table = _table(here / "pyproject.toml")
        if table:
            return here / "pyproject.toml", table
    return None, {}


def _table(p: Path, required: bool = False) -> dict[str, Any]:
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(p)!r} is not valid TOML: {exc}") from None
    if p.name == "pyproject.toml":
        table = doc.get("tool", {}).get("midicorpus", {})
        if required and not table:
            raise ConfigError(f"{str(p)!r} has no [tool.midicorpus] table")
        return table
    return doc


def load_config(path: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None) -> ServeConfig:
    """Find, read and validate the config (see the module docstring); defaults when no file."""
    p, table = find_config(path, cwd)
    cfg = from_mapping(table, str(p) if p else "defaults")
    base = p.parent if p else (Path(cwd) if cwd is not None else Path.cwd())
    cfg.lake = lake_location(cfg.lake, base)
    cfg.inbox.path = str((base / os.path.expanduser(cfg.inbox.path)).absolute())
    if "lake" not in table and os.environ.get("MIDICORPUS_LAKE"):
        cfg.lake = lake_location(os.environ["MIDICORPUS_LAKE"])
    if "scheduler" not in table and os.environ.get("MIDICORPUS_SCHEDULER"):
        cfg.scheduler = os.environ["MIDICORPUS_SCHEDULER"]
    return cfg


def from_mapping(table: dict[str, Any], source: str = "config") -> ServeConfig:
    """A validated :class:`ServeConfig` from the TOML table (unknown keys are errors)."""
    top = {k: v for k, v in table.items() if k not in _SECTIONS}
    cfg = ServeConfig(**_fields(ServeConfig, top, source, "", exclude=set(_SECTIONS) | {"source"}))
    for name, cls in _SECTIONS.items():
        sub = table.get(name, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, got {sub!r}")
        setattr(cfg, name, cls(**_fields(cls, sub, source, f"{name}.")))
    cfg.source = source
    validate(cfg)
    return cfg


def _fields(
    cls: type, values: dict[str, Any], source: str, prefix: str, exclude: set[str] = frozenset()
) -> dict[str, Any]:  # type: ignore[assignment]
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {prefix + key!r}; known: {', '.join(prefix + k for k in known)}")
        out[key] = _coerce(known[key].type, value, source, prefix + key)
    return out


def _coerce(typ: Any, value: Any, source: str, key: str) -> Any:
    t = str(typ)
    optional = "None" in t
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ConfigError(f"{source}: {key} must be set, got {value!r}")
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be a whole number, got {value!r}")
        return value
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if t.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if t.startswith("list[str]"):
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{source}: {key} must be a list of strings, got {value!r}")
        return value
    if t.startswith("list[float]"):
        if not isinstance(value, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value
        ):
            raise ConfigError(f"{source}: {key} must be a list of numbers, got {value!r}")
        return [float(x) for x in value]
    raise AssertionError(f"unhandled config type {t} for {key}")  # an internal invariant


def validate_cron(expr: str, where: str) -> None:
    """One line naming the bad cron expression (Prefect's own validator decides)."""
    if not expr:
        return
    from prefect.schedules import Cron

    try:
        Cron(expr)
    except ValueError:
        raise ConfigError(
            f"{where} must be a cron expression like '0 2 * * *' (minute hour day month weekday), got {expr!r}"
        ) from None


def validate(cfg: ServeConfig) -> None:
    import zoneinfo

    src = cfg.source
    try:
        zoneinfo.ZoneInfo(cfg.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{src}: timezone must be an IANA name like 'UTC' or 'Europe/Paris', got {cfg.timezone!r}"
        ) from None
    validate_cron(cfg.crawl.cron, f"{src}: crawl.cron")
    validate_cron(cfg.snapshot.cron, f"{src}: snapshot.cron")
    validate_cron(cfg.maintain.cron, f"{src}: maintain.cron")
    if cfg.maintain.keep_days < 0:
        raise ConfigError(f"{src}: maintain.keep_days must be 0 or more days, got {cfg.maintain.keep_days!r}")
    if cfg.scheduler is not None and not cfg.scheduler.startswith(
        ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
    ):
        raise ConfigError(f"{src}: scheduler must be a Dask address like 'tcp://HOST:8786', got {cfg.scheduler!r}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"{src}: workers must be 0 or more, got {cfg.workers!r}")
    if cfg.lock_wait_s < 0:
        raise ConfigError(f"{src}: lock_wait_s must be 0 or more seconds, got {cfg.lock_wait_s!r}")
    if cfg.inbox.every_s < 0:
        raise ConfigError(f"{src}: inbox.every_s must be 0 (no schedule) or more seconds, got {cfg.inbox.every_s!r}")
    if cfg.inbox.settle_s < 0:
        raise ConfigError(f"{src}: inbox.settle_s must be 0 or more seconds, got {cfg.inbox.settle_s!r}")
    if not cfg.inbox.source or not all(c.isalnum() or c in "_.-" for c in cfg.inbox.source):
        raise ConfigError(f"{src}: inbox.source must be letters, digits, '_', '-' or '.', got {cfg.inbox.source!r}")
    if cfg.crawl.max_pieces is not None and cfg.crawl.max_pieces < 1:
        raise ConfigError(f"{src}: crawl.max_pieces must be 1 or more, got {cfg.crawl.max_pieces!r}")
    if cfg.crawl.delay is not None and cfg.crawl.delay < 0:
        raise ConfigError(f"{src}: crawl.delay must be 0 or more seconds, got {cfg.crawl.delay!r}")
    if not cfg.tokenize.schemes:
        raise ConfigError(f"{src}: tokenize.schemes must name at least one scheme, got {cfg.tokenize.schemes!r}")
    from corpus.tokenize import presets

    for sch in cfg.tokenize.schemes:
        if sch not in presets.PRESETS:
            raise ConfigError(f"{src}: tokenize.schemes: unknown scheme {sch!r}; known: {', '.join(presets.PRESETS)}")
    _check_transpose(cfg.tokenize.transpose, f"{src}: tokenize.transpose")
    s = cfg.snapshot
    if len(s.split) != 3:
        raise ConfigError(f"{src}: snapshot.split must be three fractions [train, valid, test], got {s.split!r}")
    from corpus.snapshot import SnapshotError, SnapshotSpec

    try:
        SnapshotSpec(s.name, s.scheme, s.where, s.transpose, tuple(s.split), s.seed, s.max_seq_len).validate()  # type: ignore[arg-type]
    except SnapshotError as exc:
        raise ConfigError(f"{src}: snapshot: {exc}") from None


def _check_transpose(mode: str, where: str) -> None:
    from corpus.tokenize.stage import TokenizeError, parse_transpose

    try:
        parse_transpose(mode)
    except TokenizeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
