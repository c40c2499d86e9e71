"""A polite crawler for the Mutopia Project (www.mutopiaproject.org) that yields SourceItems.

Enumeration follows the site's paginated listing ``cgibin/make-table.cgi?startat=N`` ("Next
10" links; every row carries the piece's folder and its ``.mid`` or ``-mids.zip`` link), then
reads each piece's ``<folder>/<name>.rdf`` (metadata, licence) and its MIDI. ``mode="new"``
reads ``latestadditions.rss`` instead and visits ``piece-info.cgi?id=N`` for ids above the
highest one seen so far (SITE.md 2.5).

Politeness: one request at a time, at least ``delay`` seconds between request starts (raised,
never lowered, by robots.txt ``Crawl-delay``); robots.txt is read at the start of every crawl
with protego (5xx or unreachable: crawl nothing; 4xx: everything allowed); a descriptive
User-Agent; timeouts on every request; retries on 429/5xx/network errors with exponential
backoff, jitter and ``Retry-After``; a circuit breaker stops the crawl after ``breaker``
consecutive failed attempts; links off the base host are ignored; re-crawls send
``If-None-Match`` / ``If-Modified-Since`` and a 304 is "unchanged".

State (``<lake>/crawl/mutopia/state.json``, atomic writes after every piece and listing page)
holds the frontier of the current crawl, the URLs it visited, and per URL the validators and
content hashes. The crawler stores fetched MIDI bytes in the lake's raw store before
yielding them, so a crawl killed at any point resumes without fetching anything twice, and a
304 re-yields the stored bytes (ingest then counts them as unchanged). All fetching happens
in the iterating thread, so the per-host limit needs no lock. The crawler takes no lake lock:
the caller holds it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import html
import io
import json
import random
import re
import stat
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Any, Final, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree as ET

from corpus.lake import Lake
from corpus.reasons import REASONS
from corpus.sources.base import SourceItem
from corpus.sources.files import Limits, is_midi_name, unsafe_member_name
from schemas import MUTOPIA_META_KEYS

SOURCE: Final = "mutopia"
DEFAULT_BASE_URL: Final = "https://www.mutopiaproject.org"
DEFAULT_USER_AGENT: Final = "midicorpus/0.1 (+https://github.com/midicorpus; contact: midicorpus@example.org)"
DEFAULT_DELAY: Final = 1.0
STATE_VERSION: Final = 1
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
MP_NS: Final = "http://www.mutopiaproject.org/piece-data/0.1/"
RDF_NS: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
LISTING_PATH: Final = "/cgibin/make-table.cgi?startat=0"

# reason codes this module yields that corpus.reasons does not hold yet (see the report)
NEW_REASONS: Final[dict[str, str]] = {k: REASONS[k] for k in ("http_not_found", "http_error", "robots_disallowed")}

# pieces.meta columns, all VARCHAR (movement and zip_url NULL for single .mid files)
META_KEYS: Final = MUTOPIA_META_KEYS


class CrawlStopped(Exception):
    """The crawl must end now; the message says why (kept in ``stopped_because``)."""


# ------------------------------------------------------------------ pure helpers
def normalize_license(text: str | None) -> str | None:
    """Mutopia's free-text licence to an SPDX-like id (``PD``, ``CC-BY-SA-3.0``...); None if unknown.

    Handles the variants in the archive: "Creative Commons Attribution-ShareAlike 3.0
    (Unported)", "... 4.0 International", "Creative Commons BY-SA 2.5", a missing version
    (the site maps plain "Attribution-ShareAlike" to 2.5), "null" and empty.
    """
    t = " ".join((text or "").lower().replace("_", " ").split())
    if not t or t in {"null", "none", "n/a", "unknown"}:
        return None
    if "public domain" in t or "publicdomain" in t or t == "pd":
        return "PD"
    if not ("creative commons" in t or t.startswith("cc") or "/licenses/" in t):
        return None
    words = re.sub(r"[^a-z0-9.]+", " ", t.replace("creative commons", "")).split()
    joined = " ".join(words)
    parts = []
    if "attribution" in words or "by" in words:
        parts.append("BY")
    if "noncommercial" in joined.replace(" ", "") or "nc" in words:
        parts.append("NC")
    if "noderivs" in joined.replace(" ", "") or "noderivatives" in joined.replace(" ", "") or "nd" in words:
        parts.append("ND")
    if "sharealike" in joined.replace(" ", "") or "sa" in words:
        parts.append("SA")
    if not parts or parts[0] != "BY":
        return None
    m = re.search(r"\b(\d)(?:\.(\d))?\b", joined)
    if m:
        version = f"{m.group(1)}.{m.group(2) or '0'}"
    elif parts == ["BY", "SA"]:
        version = "2.5"
    else:
        return "CC-" + "-".join(parts)
    return "CC-" + "-".join(parts) + "-" + version


_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);")


def _clean(text: str | None) -> str:
    t = (text or "").strip()
    if _ENTITY.search(t):  # double-escaped in the source ("&amp;amp;" arrives as "&amp;")
        t = html.unescape(t)
    return "" if t == "null" else t


def parse_rdf(data: bytes) -> dict[str, str]:
    """Fields of a piece RDF (both serialisations) by local name; empty elements give ''.

    Raises ValueError when the bytes are not an RDF with an ``mp`` description.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        text = data.decode("utf-8", errors="replace")  # a Latin-1 header in a UTF-8 file
        text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise ValueError(f"not XML: {exc}") from None
    desc = root.find(f".//{{{RDF_NS}}}Description")
    if desc is None:
        raise ValueError("no rdf:Description")
    out = {}
    for el in desc:
        if el.tag.startswith(f"{{{MP_NS}}}"):
            out[el.tag[len(MP_NS) + 2 :]] = _clean(el.text)
    if not out:
        raise ValueError("no Mutopia fields in the RDF")
    return out


def mutopia_number(mutopia_id: str) -> str:
    """'Mutopia-2013/07/07-980' -> '980' ('' when there is none)."""
    m = re.search(r"-(\d+)\s*$", mutopia_id or "")
    return m.group(1) if m else ""


@dataclass
class ListingRow:
    id: str
    title: str = ""
    composer_name: str = ""
    license_text: str = ""
    mid_url: str = ""
    folder_url: str = ""
    source_page: str = ""


class _ListingParser(HTMLParser):
    """Result tables of make-table.cgi / piece-info.cgi pages, and the "Next 10" link."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.results: list[dict[str, Any]] = []
        self.cur: dict[str, Any] | None = None
        self.href: str | None = None
        self.atext: list[str] = []
        self.bold = False
        self.next_href: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.depth += 1
            if self.depth == 1:
                self.cur = {"links": [], "cells": [], "bold": [], "cell": []}
        elif tag == "a":
            self.href = a.get("href")
            self.atext = []
        elif tag == "b":
            self.bold = True
        elif tag in ("td", "th") and self.cur is not None:
            self.cur["cell"] = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
            if self.depth == 0 and self.cur is not None:
                self.results.append(self.cur)
                self.cur = None
        elif tag == "a" and self.href is not None:
            text = " ".join("".join(self.atext).split())
            if self.cur is not None:
                self.cur["links"].append((self.href, text))
            elif text.lower().startswith("next"):
                self.next_href = self.href
            self.href = None
        elif tag == "b":
            self.bold = False
        elif tag in ("td", "th") and self.cur is not None:
            self.cur["cells"].append(" ".join("".join(self.cur["cell"]).split()))

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.href is not None:
            self.atext.append(data)
        if self.cur is not None:
            self.cur["cell"].append(data)
            if self.bold:
                self.cur["bold"].append(data.strip())


@dataclass
class ListingPage:
    rows: list[ListingRow]
    next_url: str | None
    not_found: bool  # a "Piece (ID=N) not found" / "no matches" page (served with HTTP 200)
    offsite_links: int  # links to other hosts, ignored


def parse_listing(page: str, page_url: str) -> ListingPage:
    """Rows of a listing or piece-info page (links made absolute; other hosts ignored)."""
    p = _ListingParser()
    p.feed(page)
    p.close()
    host = urlsplit(page_url).netloc.lower()
    rows = []
    offsite = 0
    for res in p.results:
        row = ListingRow(id="", source_page=page_url)
        for href, text in res["links"]:
            url = urljoin(page_url, html.unescape(href))
            if urlsplit(url).netloc.lower() != host:
                offsite += 1
                continue
            path = urlsplit(url).path
            m = re.search(r"piece-info\.cgi\?(?:.*&)?id=(\d+)", url)
            if m and not row.id:
                row.id = m.group(1)
                row.source_page = url
            elif "legal.html" in path and not row.license_text:
                row.license_text = text
            elif "/ftp/" in path and path.endswith("/") and not row.folder_url:
                row.folder_url = url
            elif "/ftp/" in path and (path.lower().endswith((".mid", ".midi", "-mids.zip"))) and not row.mid_url:
                row.mid_url = url
        if not row.id:
            continue
        row.title = next((b for b in res["bold"] if b), "")
        for cell in res["cells"]:
            if cell.startswith("by "):
                row.composer_name = cell[3:].strip()
                break
        if not row.composer_name and len(res["cells"]) > 1:
            row.composer_name = res["cells"][1]
        rows.append(row)
    text = " ".join("".join(p.text).split())
    not_found = bool(re.search(r"Piece \(ID=[^)]*\) not found", text)) or "no matches were found" in text
    next_url = urljoin(page_url, html.unescape(p.next_href)) if p.next_href else None
    return ListingPage(rows, next_url, not_found, offsite)


def parse_rss_ids(data: bytes) -> list[int]:
    """Piece ids linked from latestadditions.rss (newest first, as the feed lists them)."""
    root = ET.fromstring(data)
    ids = []
    for item in root.iter("item"):
        for tag in ("link", "guid"):
            el = item.find(tag)
            m = re.search(r"id=(\d+)", el.text or "") if el is not None else None
            if m:
                ids.append(int(m.group(1)))
                break
    return ids


def _retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


# ------------------------------------------------------------------ HTTP
@dataclass
class Response:
    url: str
    status: int  # 0: no HTTP answer (network error, too large)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # 3xx surface as HTTPError; the crawler follows on-host ones itself


@dataclass
class CrawlStats:
    """Counters of one crawler run (one iteration)."""

    requests: int = 0
    retries: int = 0
    not_modified: int = 0
    bytes: int = 0
    pieces: int = 0
    items: int = 0
    rejected: int = 0
    offsite_links: int = 0
    disallowed: int = 0
    not_found_pages: int = 0
    rdf_errors: int = 0
    resumed: bool = False
    stopped_because: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"mutopia crawl: {self.pieces} pieces, {self.items} files ({self.rejected} rejected), "
            f"{self.requests} requests ({self.not_modified} not modified), {self.bytes} bytes; "
            f"stopped: {self.stopped_because}"
        )


class MutopiaCrawler:
    """Iterate to crawl; yields one SourceItem per MIDI file (zip members each their own).

    ``max_pieces`` / ``max_bytes`` bound one run; the next run resumes the same crawl where
    this one stopped. A crawl that reaches the end of the listing is "done", and the next
    run starts a new crawl (conditional requests for everything seen before).
    """

    name = SOURCE

    def __init__(
        self,
        lake: Lake,
        base_url: str = DEFAULT_BASE_URL,
        delay: float = DEFAULT_DELAY,
        user_agent: str = DEFAULT_USER_AGENT,
        max_pieces: int | None = None,
        max_bytes: int | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 120.0,
        breaker: int = 8,
        mode: Literal["full", "new"] = "full",
        limits: Limits = Limits(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        split = urlsplit(base_url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"base URL {base_url!r} must be http(s)://host[:port]")
        if delay < 0 or timeout <= 0 or max_retries < 0 or breaker < 1:
            raise ValueError(
                f"need delay >= 0, timeout > 0, max_retries >= 0, breaker >= 1; "
                f"got {delay!r}, {timeout!r}, {max_retries!r}, {breaker!r}"
            )
        for opt, val in (("max_pieces", max_pieces), ("max_bytes", max_bytes)):
            if val is not None and val < 0:
                raise ValueError(f"{opt} {val!r} must be >= 0 (or None for no limit)")
        if mode not in ("full", "new"):
            raise ValueError(f"mode {mode!r} must be 'full' or 'new'")
        if not user_agent.strip():
            raise ValueError("user agent must not be empty")
        self.lake = lake
        self.base = f"{split.scheme}://{split.netloc}{split.path.rstrip('/')}"
        self.host = split.netloc.lower()
        self.scheme = split.scheme
        self.delay = float(delay)
        self.user_agent = user_agent
        self.max_pieces = max_pieces
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.breaker = breaker
        self.mode = mode
        self.limits = limits
        self._sleep = sleep
        self._clock = clock
        self._last_start: float | None = None
        self._failures = 0
        self._robots: Any = None
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.stats = CrawlStats()
        self.state: dict[str, Any] = {}

    # -------------------------------------------------------------- counters as attributes
    @property
    def requests(self) -> int:
        return self.stats.requests

    @property
    def not_modified(self) -> int:
        return self.stats.not_modified

    @property
    def bytes(self) -> int:
        return self.stats.bytes

    @property
    def pieces(self) -> int:
        return self.stats.pieces

    @property
    def stopped_because(self) -> str:
        return self.stats.stopped_because

    STATE_REL = "crawl/mutopia/state.json"

    @property
    def state_path(self) -> str:
        return self.lake.uri(self.STATE_REL)

    # -------------------------------------------------------------- state
    def _load_state(self) -> None:
        state: dict[str, Any] = {}
        try:
            state = json.loads(self.lake.read_bytes(self.STATE_REL))
        except (OSError, ValueError):  # absent or unreadable: start afresh
            state = {}
        if state.get("version") != STATE_VERSION or state.get("base_url") != self.base:
            state = {
                "version": STATE_VERSION,
                "base_url": self.base,
                "urls": {},
                "max_id": 0,
                "crawl": None,
                "history": [],
            }
        self.state = state

    def _save(self) -> None:
        self.lake.write_bytes(self.STATE_REL, json.dumps(self.state, sort_keys=True).encode())

    def _start_or_resume(self) -> dict[str, Any]:
        crawl = self.state.get("crawl")
        if crawl and crawl.get("status") == "running" and crawl.get("mode") == self.mode:
            self.stats.resumed = True
            return crawl
        crawl = {
            "id": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ"),
            "mode": self.mode,
            "status": "running",
            "frontier": [],
            "visited": {},
            "seeded": False,
        }
        self.state["crawl"] = crawl
        return crawl

    # -------------------------------------------------------------- URLs
    def on_host(self, url: str) -> str | None:
        """``url`` on the base host (scheme made the base's), or None for any other host."""
        s = urlsplit(url)
        if s.scheme not in ("http", "https") or s.netloc.lower() != self.host:
            return None
        return urlunsplit((self.scheme, s.netloc, s.path, s.query, ""))

    def allowed(self, url: str) -> bool:
        return self._robots is None or bool(self._robots.can_fetch(url, self.user_agent))

    # -------------------------------------------------------------- fetching
    def _wait_turn(self) -> None:
        if self._last_start is not None:
            wait = self._last_start + self.delay - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_start = self._clock()

    def _once(self, url: str, headers: dict[str, str], limit: int) -> Response:
        self._wait_turn()
        self.stats.requests += 1
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity", **headers}
        req = urllib.request.Request(url, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body = resp.read(limit + 1)
                status, hdrs = resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read(min(limit, 1 << 20) + 1) if exc.code != 304 else b""
            except (TimeoutError, OSError):
                body = b""
            status, hdrs = exc.code, exc.headers
        except (TimeoutError, urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return Response(url, 0, error=f"{type(exc).__name__}: {reason}")
        self.stats.bytes += len(body)
        headers_out = {k.lower(): v for k, v in (hdrs or {}).items()}
        if len(body) > limit:
            return Response(url, 0, headers_out, b"", error=f"response larger than {limit} bytes")
        return Response(url, status, headers_out, body)

    def fetch(self, url: str, conditional: dict[str, str] | None = None, *, retries: bool = True) -> Response:
        """GET an on-host URL politely; a final failure counts towards the circuit breaker."""
        limit = self.limits.max_file_bytes
        if self.max_bytes is not None:
            left = self.max_bytes - self.stats.bytes
            if left <= 0:
                raise CrawlStopped(f"max_bytes reached ({self.stats.bytes} >= {self.max_bytes} bytes downloaded)")
            limit = min(limit, left)
        attempt = 0
        redirects = 0
        while True:
            resp = self._once(url, conditional or {}, limit)
            if resp.status in (301, 302, 303, 307, 308) and redirects < 5:
                target = self.on_host(urljoin(url, resp.headers.get("location", "")))
                if target is None or not self.allowed(target):
                    why = f"redirect off host or disallowed: {resp.headers.get('location')!r}"
                    return Response(url, resp.status, resp.headers, b"", error=why)
                url, redirects = target, redirects + 1
                continue
            failed = resp.status == 0 or resp.status in RETRY_STATUSES
            if not failed:
                self._failures = 0
                return resp
            self._failures += 1
            if self._failures >= self.breaker:
                raise CrawlStopped(
                    f"circuit breaker: {self._failures} consecutive failed requests, last {url} -> "
                    f"{resp.error or 'HTTP ' + str(resp.status)}"
                )
            if not retries or attempt >= self.max_retries:
                return resp
            attempt += 1
            self.stats.retries += 1
            wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            after = _retry_after_seconds(resp.headers.get("retry-after"))
            if after is not None:
                if after > self.max_backoff:
                    raise CrawlStopped(
                        f"server asked to retry after {after:.0f} s (> {self.max_backoff:.0f} s) for {url}"
                    )
                wait = max(wait, after)
            self._sleep(wait)

    def _load_robots(self) -> None:
        from protego import Protego

        url = f"{self.base}/robots.txt"
        resp = self.fetch(url, retries=False)
        if resp.ok:
            self._robots = Protego.parse(resp.body.decode("utf-8", errors="replace"))
            cd = self._robots.crawl_delay(self.user_agent)
            if cd is not None and float(cd) > self.delay:
                self.delay = float(cd)
        elif 400 <= resp.status < 500 and resp.status != 429:
            self._robots = None  # no robots.txt: everything allowed
        else:
            raise CrawlStopped(f"robots.txt unavailable ({resp.error or 'HTTP ' + str(resp.status)}); crawled nothing")

    # -------------------------------------------------------------- the crawl
    def __iter__(self) -> Iterator[SourceItem]:
        self.stats = CrawlStats()
        self._failures = 0
        self._load_state()
        crawl = self._start_or_resume()
        try:
            self._load_robots()
            if not crawl["seeded"]:
                self._seed(crawl)
                crawl["seeded"] = True
                self._save()
            frontier: list[dict[str, Any]] = crawl["frontier"]
            while frontier:
                entry = frontier[0]
                if entry["kind"] == "listing":
                    new = self._listing(crawl, entry["url"])
                    frontier[:1] = new
                else:
                    if self.max_pieces is not None and self.stats.pieces >= self.max_pieces:
                        raise CrawlStopped(f"max_pieces reached ({self.max_pieces}); the next run resumes this crawl")
                    for item in self._piece(crawl, entry):
                        self.stats.items += 1
                        self.stats.rejected += item.reject is not None
                        yield item
                    self.stats.pieces += 1
                    frontier.pop(0)
                self._save()
            crawl["status"] = "done"
            self.stats.stopped_because = "done: the whole listing was crawled"
        except CrawlStopped as exc:
            self.stats.stopped_because = str(exc)
        finally:
            if not self.stats.stopped_because:
                self.stats.stopped_because = "interrupted by the caller"
            history = self.state.setdefault("history", [])
            at = dt.datetime.now(dt.UTC).isoformat()
            history.append({"crawl": crawl["id"], "at": at, **self.stats.as_dict()})
            del history[:-50]
            self._save()

    def _seed(self, crawl: dict[str, Any]) -> None:
        if self.mode == "full":
            crawl["frontier"] = [{"kind": "listing", "url": self.base + LISTING_PATH}]
            return
        url = f"{self.base}/latestadditions.rss"
        if not self.allowed(url):
            raise CrawlStopped(f"robots.txt disallows {url}")
        resp = self.fetch(url)
        if not resp.ok:
            raise CrawlStopped(f"cannot read {url}: {resp.error or 'HTTP ' + str(resp.status)}")
        try:
            ids = parse_rss_ids(resp.body)
        except ET.ParseError as exc:
            raise CrawlStopped(f"unreadable RSS at {url}: {exc}") from None
        top = int(self.state.get("max_id") or 0)
        crawl["frontier"] = [
            {"kind": "listing", "url": f"{self.base}/cgibin/piece-info.cgi?id={i}"} for i in sorted(set(ids)) if i > top
        ]

    def _listing(self, crawl: dict[str, Any], url: str) -> list[dict[str, Any]]:
        """Fetch one listing page; return the frontier entries that replace it."""
        if url in crawl["visited"]:
            return []
        if not self.allowed(url):
            self.stats.disallowed += 1
            raise CrawlStopped(f"robots.txt disallows the listing {url}")
        resp = self.fetch(url)
        crawl["visited"][url] = resp.status
        if not resp.ok:
            raise CrawlStopped(f"listing page {url} failed: {resp.error or 'HTTP ' + str(resp.status)}")
        page = parse_listing(resp.body.decode("utf-8", errors="replace"), url)
        self.stats.offsite_links += page.offsite_links
        if not page.rows and page.not_found:
            self.stats.not_found_pages += 1
        out: list[dict[str, Any]] = []
        for row in page.rows:
            row.mid_url = self.on_host(row.mid_url) or "" if row.mid_url else ""
            row.folder_url = self.on_host(row.folder_url) or "" if row.folder_url else ""
            if row.id and (row.mid_url or row.folder_url):
                out.append({"kind": "piece", "row": asdict(row)})
        if page.next_url:
            on = self.on_host(page.next_url)
            if on is None:
                self.stats.offsite_links += 1
            else:
                out.append({"kind": "listing", "url": on})
        return out

    def _conditional(self, url: str) -> dict[str, str]:
        rec = self.state["urls"].get(url) or {}
        h = {}
        if rec.get("etag"):
            h["If-None-Match"] = rec["etag"]
        if rec.get("last_modified"):
            h["If-Modified-Since"] = rec["last_modified"]
        return h

    def _remember(self, url: str, resp: Response, **extra: Any) -> dict[str, Any]:
        rec = {
            "status": resp.status,
            "etag": resp.headers.get("etag"),
            "last_modified": resp.headers.get("last-modified"),
            "sha256": hashlib.sha256(resp.body).hexdigest(),
            "fetched_at": dt.datetime.now(dt.UTC).isoformat(),
            **extra,
        }
        self.state["urls"][url] = rec
        return rec

    def _rdf_meta(self, crawl: dict[str, Any], url: str) -> dict[str, str] | None:
        """The RDF's fields: cached when visited in this crawl or answered 304; None if none."""
        rec = self.state["urls"].get(url)
        if url in crawl["visited"]:
            return rec.get("fields") if rec else None
        if not self.allowed(url):
            self.stats.disallowed += 1
            return None
        resp = self.fetch(url, self._conditional(url) if rec and rec.get("fields") is not None else None)
        crawl["visited"][url] = resp.status
        if resp.status == 304 and rec:
            self.stats.not_modified += 1
            return rec.get("fields")
        if not resp.ok:
            return None
        try:
            fields = parse_rdf(resp.body)
        except ValueError:
            self.stats.rdf_errors += 1
            fields = None
        self._remember(url, resp, fields=fields)
        return fields

    def _piece(self, crawl: dict[str, Any], entry: dict[str, Any]) -> Iterator[SourceItem]:
        row = ListingRow(**entry["row"])
        folder = row.folder_url or row.mid_url.rsplit("/", 1)[0] + "/"
        name = PurePosixPath(urlsplit(folder).path).name
        fields = self._rdf_meta(crawl, f"{folder}{name}.rdf") if name else None
        f = fields or {}
        mid_url = row.mid_url
        if f.get("midFile"):
            mid_url = self.on_host(urljoin(folder, f["midFile"])) or mid_url
        number = mutopia_number(f.get("id", "")) or row.id
        if number.isdigit():
            self.state["max_id"] = max(int(self.state.get("max_id") or 0), int(number))
        parts = PurePosixPath(urlsplit(folder).path).parts  # ("/", "ftp", composer, ...)
        composer = f.get("composer") or (parts[2] if len(parts) > 2 and parts[1] == "ftp" else "")
        license_text = f.get("licence", "") if fields is not None else row.license_text
        meta: dict[str, Any] = {
            "mutopia_id": number,
            "title": f.get("title") or row.title,
            "composer": composer,
            "composer_name": row.composer_name,
            "opus": f.get("opus", ""),
            "instrument": f.get("for", ""),
            "style": f.get("style", ""),
            "date": f.get("date", ""),
            "license_text": license_text,
            "source_page": row.source_page,
            "file_url": mid_url,
            "movement": None,
            "zip_url": None,
        }
        if not mid_url:
            return
        yield from self._midi(crawl, mid_url, normalize_license(license_text), meta)

    def _item(
        self,
        uri: str,
        data: bytes | None,
        license: str | None,
        meta: dict[str, Any],
        reject: tuple[str, str] | None = None,
    ) -> SourceItem:
        name = PurePosixPath(uri.split("!", 1)[1]).name if "!" in uri else PurePosixPath(urlsplit(uri).path).name
        return SourceItem(source=SOURCE, uri=uri, data=data, name=name, license=license, meta=meta, reject=reject)

    def _midi(self, crawl: dict[str, Any], url: str, license: str | None, meta: dict[str, Any]) -> Iterator[SourceItem]:
        is_zip = urlsplit(url).path.lower().endswith(".zip")
        if is_zip:
            meta = {**meta, "zip_url": url}
        rec = self.state["urls"].get(url)
        stored = self._replay(rec, license, meta) if rec else None
        if url in crawl["visited"] and stored is not None:
            yield from stored  # resumed: this URL was fetched in this crawl already
            return
        if not self.allowed(url):
            self.stats.disallowed += 1
            yield self._item(url, None, license, meta, ("robots_disallowed", f"robots.txt disallows {url}"))
            return
        resp = self.fetch(url, self._conditional(url) if stored is not None else None)
        crawl["visited"][url] = resp.status
        if resp.status == 304 and stored is not None:
            self.stats.not_modified += 1
            yield from stored
            return
        if resp.status in (404, 410):
            items = [self._item(url, None, license, meta, ("http_not_found", f"HTTP {resp.status} for {url}"))]
        elif not resp.ok:
            why = resp.error or f"HTTP {resp.status}"
            code = "file_too_large" if why.startswith("response larger") else "http_error"
            yield self._item(url, None, license, meta, (code, f"{why} for {url}"))
            return  # not remembered: a transient failure must not replace what we knew
        elif is_zip:
            items = list(self._zip_members(url, resp.body, license, meta))
        else:
            items = [self._item(url, resp.body, license, meta)]
        records = []
        for item in items:
            sha = self.lake.put_raw(item.data) if item.data is not None else None
            records.append([item.uri, sha, *(item.reject or (None, None))])
        self._remember(url, resp, items=records)
        yield from items

    def _replay(self, rec: dict[str, Any], license: str | None, meta: dict[str, Any]) -> list[SourceItem] | None:
        """Items of a URL fetched before, rebuilt from the raw store; None when bytes are missing."""
        records = rec.get("items")
        if not records:
            return None
        out = []
        for uri, sha, code, detail in records:
            m = {**meta, "movement": PurePosixPath(uri.split("!", 1)[1]).stem} if "!" in uri else meta
            if sha is None:
                out.append((uri, None, m, (code, detail)))
            elif self.lake.has_raw(sha):
                out.append((uri, self.lake.get_raw(sha), m, None))
            else:
                return None
        return [self._item(uri, data, license, m, rej) for uri, data, m, rej in out]

    def _zip_members(self, url: str, body: bytes, license: str | None, meta: dict[str, Any]) -> Iterator[SourceItem]:
        try:
            zf = zipfile.ZipFile(io.BytesIO(body))
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            why = f"{type(exc).__name__}: {exc} ({len(body)} bytes)"
            yield self._item(url, None, license, meta, ("archive_corrupt", why))
            return
        found = False
        with zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                member = info.filename
                uri = f"{url}!{member}"
                m = {**meta, "movement": PurePosixPath(member).stem}
                why = unsafe_member_name(member)
                mode = info.external_attr >> 16
                if why:
                    yield self._item(uri, None, license, m, ("unsafe_path", why))
                    continue
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    yield self._item(uri, None, license, m, ("not_regular_file", f"zip member mode {oct(mode)}"))
                    continue
                if not is_midi_name(member):
                    continue
                found = True
                if info.file_size > self.limits.max_file_bytes or (
                    info.compress_size and info.file_size / info.compress_size > self.limits.max_ratio
                ):
                    why = f"declares {info.file_size} bytes from {info.compress_size}"
                    yield self._item(uri, None, license, m, ("archive_bomb", why))
                    continue
                try:
                    with zf.open(info) as fh:
                        data = fh.read(self.limits.max_file_bytes + 1)
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                    yield self._item(uri, None, license, m, ("archive_corrupt", f"{type(exc).__name__}: {exc}"))
                    continue
                if len(data) > self.limits.max_file_bytes:
                    why = f"member inflates past {self.limits.max_file_bytes} bytes"
                    yield self._item(uri, None, license, m, ("archive_bomb", why))
                    continue
                yield self._item(uri, data, license, m)
        if not found:
            yield self._item(url, None, license, meta, ("archive_corrupt", "zip holds no MIDI member"))


def crawl(
    lake: Lake,
    engine: Any,
    *,
    base_url: str = DEFAULT_BASE_URL,
    max_pieces: int | None = None,
    delay: float = DEFAULT_DELAY,
    user_agent: str = DEFAULT_USER_AGENT,
    config: Any = None,
    progress: Callable[[Any], None] | None = None,
    **crawler_options: Any,
) -> tuple[Any, CrawlStats]:
    """Crawl Mutopia and ingest what it yields; returns (IngestSummary, CrawlStats).

    The caller holds ``lake.lock()``; this function takes no lock.
    """
    from corpus.ingest import ingest

    crawler = MutopiaCrawler(
        lake, base_url=base_url, delay=delay, user_agent=user_agent, max_pieces=max_pieces, **crawler_options
    )
    summary = ingest(lake, crawler, engine, config, progress, command="crawl mutopia")
    return summary, crawler.stats
