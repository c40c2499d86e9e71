"""A local imitation of www.mutopiaproject.org for crawler tests (127.0.0.1 only).

Serves ``site_mirror/`` of ``../shared/data/mutopia-site`` as static files, plus the pages
the real site generates (SITE.md sections 2.1-2.4): ``make-table.cgi`` (10 per page with a
"Next 10" link), ``piece-info.cgi`` (HTTP 200 "not found" page for unknown ids),
``piece-list.html`` and ``latestadditions.rss``. Pieces whose MIDI is not in the mirror get
a small stand-in MIDI (distinct per piece), and ``-mids.zip`` pieces a zip of stand-ins.

Failure modes are attributes that tests flip (see ``MutopiaSite.__init__``). Every request is
recorded as a :class:`Seen` (monotonic time, method, path with query, headers).
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import io
import re
import struct
import threading
import time
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree as ET

MP = "{http://www.mutopiaproject.org/piece-data/0.1/}"
LAST_MODIFIED = "Wed, 24 Jul 2019 10:00:00 GMT"


@dataclass(frozen=True)
class Seen:
    t: float
    method: str
    path: str  # path plus "?query" when there is one
    headers: dict[str, str]


@dataclass
class Piece:
    id: int
    folder: str  # "ftp/BachJS/BWV988/bwv-988-v01"
    name: str
    fields: dict[str, str]  # RDF field -> text

    @property
    def mid_file(self) -> str:
        return self.fields.get("midFile") or f"{self.name}.mid"


def stand_in_midi(seed: int, n_notes: int = 4) -> bytes:
    """A tiny valid format-0 MIDI whose notes depend on ``seed`` (so bytes differ per piece)."""
    events = bytearray()
    for k in range(n_notes):
        pitch = 40 + (seed * 7 + k * 5) % 48
        events += bytes([0x00, 0x90, pitch, 80, 0x60, 0x80, pitch, 0])
    events += bytes([0x00, 0xFF, 0x01, 0x04]) + struct.pack(">I", seed)  # text event: the seed
    events += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(events)) + bytes(events)


def _composer_names(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    names = {}
    for code, name in zip(lines[0::2], lines[1::2]):
        names[code.strip()] = re.sub(r"\s*\(.*\)\s*$", "", name.strip())
    return names


def load_pieces(mirror: Path) -> list[Piece]:
    pieces = []
    for rdf in sorted((mirror / "ftp").rglob("*.rdf")):
        root = ET.parse(rdf).getroot()
        desc = root.find("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
        assert desc is not None
        fields = {el.tag.removeprefix(MP): (el.text or "").strip() for el in desc}
        m = re.search(r"-(\d+)$", fields.get("id", ""))
        if not m:
            continue
        folder = rdf.parent.relative_to(mirror).as_posix()
        pieces.append(Piece(int(m.group(1)), folder, rdf.stem, fields))
    pieces.sort(key=lambda p: p.id)
    return pieces


class MutopiaSite:
    """The server. Use as a context manager; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, data_dir: Path, n_pieces: int | None = None, ids: list[int] | None = None) -> None:
        self.root = data_dir / "mutopia-site"
        self.mirror = self.root / "site_mirror"
        self.composers = _composer_names(self.root / "datafiles" / "composers.dat")
        pieces = load_pieces(self.mirror)
        if ids is not None:
            pieces = [p for p in pieces if p.id in ids]
        if n_pieces is not None:
            pieces = pieces[:n_pieces]
        self.all_pieces = {p.id: p for p in load_pieces(self.mirror)}
        self.pieces = pieces
        self.by_id = {p.id: p for p in pieces}
        # switches
        self.robots: str | None = (self.mirror / "robots.txt").read_text()
        self.robots_status = 200
        self.slow = 0.0  # seconds before every response whose path starts with slow_prefix
        self.slow_prefix = "/"
        self.fail_next = 0  # the next N non-robots requests answer fail_status
        self.fail_status = 503
        self.retry_after: str | None = "1"
        self.fail_prefix: str | None = None  # every request whose path starts with it answers fail_status
        self.truncated_zips: set[str] = set()  # zip file names served cut in half
        self.missing_files: set[str] = set()  # file names answered 404 (MIDI, zip or RDF)
        self.validators = True  # ETag + Last-Modified on static files, 304 on a match
        self.changed: set[str] = set()  # file names whose bytes (and ETag) change
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------
    def __enter__(self) -> MutopiaSite:
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                site._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_piece(self, piece_id: int) -> None:
        """Publish one more piece of the mirror (for incremental crawls)."""
        self.pieces = sorted([*self.pieces, self.all_pieces[piece_id]], key=lambda p: p.id)
        self.by_id = {p.id: p for p in self.pieces}

    def paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- content ----------------------------------------------------------------------
    def file_bytes(self, rel: str) -> bytes | None:
        """Bytes of a static path (no leading '/'), generated for MIDI/zips not in the mirror."""
        path = self.mirror / rel
        name = rel.rsplit("/", 1)[-1]
        data: bytes | None = None
        if path.is_file():
            data = path.read_bytes()
        else:
            piece = self._piece_of(rel)
            if piece is not None and name == piece.mid_file:
                if name.endswith("-mids.zip"):
                    data = self._zip(piece)
                elif name.endswith(".mid"):
                    data = stand_in_midi(piece.id)
        if data is None:
            return None
        if name in self.changed:
            data = data + b"\x00" if not name.endswith(".rdf") else data.replace(b"</rdf:RDF>", b"</rdf:RDF>\n")
        if name in self.truncated_zips:
            data = data[: len(data) // 2]
        return data

    def _piece_of(self, rel: str) -> Piece | None:
        folder = rel.rsplit("/", 1)[0]
        for p in self.pieces:
            if p.folder == folder:
                return p
        return None

    def _zip(self, piece: Piece) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for k in range(1, 4):
                info = zipfile.ZipInfo(f"{piece.name.lower()}-mov{k}.mid", date_time=(2019, 7, 24, 0, 0, 0))
                zf.writestr(info, stand_in_midi(piece.id * 10 + k, n_notes=4 + k))
        return buf.getvalue()

    def _abs(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def composer_name(self, code: str) -> str:
        return self.composers.get(code, code)

    def _result_table(self, p: Piece) -> str:
        f = p.fields
        comp = p.fields.get("composer", "")
        by = "" if comp in {"Anonymous", "Traditional"} else "by "
        date = f.get("id", "").split("-")[1] if "-" in f.get("id", "") else ""
        mid = f"{self._abs(p.folder)}/{p.mid_file}"
        label = ".mid files (zipped)" if p.mid_file.endswith(".zip") else ".mid file"
        return (
            '<table border="1" width="100%">\n'
            f"<tr><td><b>{html.escape(f.get('title', ''))}</b></td><td>{by}{html.escape(self.composer_name(comp))}</td></tr>\n"
            f"<tr><td>{html.escape(f.get('opus', ''))}</td><td>for {html.escape(f.get('for', ''))}</td></tr>\n"
            f"<tr><td>{html.escape(f.get('date', ''))}</td><td>{html.escape(f.get('style', ''))}</td></tr>\n"
            f'<tr><td><a href="../legal.html#publicdomain">{html.escape(f.get("licence", ""))}</a></td>'
            f'<td><a href="piece-info.cgi?id={p.id}">More Information</a></td></tr>\n'
            f"<tr><td>{date}</td><td>"
            f'<a href="{self._abs(p.folder)}/{p.name}.ly">.ly file</a> '
            f'<a href="{mid}">{label}</a> '
            f'<a href="{self._abs(p.folder)}/">Appropriate FTP area</a> '
            f'<a href="https://creativecommons.org/licenses/by-sa/3.0/">CC</a> '
            f'<a href="http://elsewhere.example.org/ftp/x/x.mid">mirror</a>'
            "</td></tr>\n</table>\n"
        )

    def make_table(self, query: dict[str, list[str]]) -> str:
        start = int((query.get("startat") or ["0"])[0] or 0)
        want_id = (query.get("id") or [""])[0]
        comp = (query.get("Composer") or [""])[0]
        hits = [
            p for p in self.pieces if (not want_id or str(p.id) == want_id) and p.folder.split("/")[1].startswith(comp)
        ]
        page = hits[start : start + 10]
        body = "".join(self._result_table(p) for p in page) or "<p>Sorry, no matches were found</p>\n"
        if start + 10 < len(hits):
            keys = [
                "searchingfor",
                "Composer",
                "Instrument",
                "Style",
                "collection",
                "id",
                "solo",
                "recent",
                "timelength",
                "timeunit",
                "lilyversion",
                "preview",
            ]
            rest = "&amp;".join(f"{k}={(query.get(k) or [''])[0]}" for k in keys)
            body += f'<p><a href="make-table.cgi?startat={start + 10}&amp;{rest}">Next 10</a></p>\n'
        return f"<html><head><title>Mutopia search</title></head><body>\n{body}</body></html>\n"

    def piece_info(self, query: dict[str, list[str]]) -> str:
        raw = (query.get("id") or [""])[0]
        p = self.by_id.get(int(raw)) if raw.isdigit() else None
        if p is None:
            return f"<html><body><h2>Piece (ID={html.escape(raw)}) not found</h2></body></html>\n"
        lic = {"Public Domain": "pd"}.get(p.fields.get("licence", ""), "asa3")
        return (
            f'<html><head><link rel="meta" href="../cc-rdfs/{lic}.rdf"></head><body>\n'
            f"{self._result_table(p)}<p>Music ID Number: {html.escape(p.fields.get('id', ''))}</p>\n"
            f'<a href="{self._abs(p.folder)}/{p.name}.log">View change history</a>\n</body></html>\n'
        )

    def piece_list(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(self.composer_name(p.fields.get('composer', '')))}</td>"
            f'<td><a href="cgibin/piece-info.cgi?id={p.id}">{html.escape(p.fields.get("title", ""))}</a></td>'
            f"<td>{html.escape(p.fields.get('opus', ''))}</td><td>{html.escape(p.fields.get('for', ''))}</td></tr>\n"
            for p in self.pieces
        )
        return f"<html><body><table>\n{rows}</table></body></html>\n"

    def rss(self) -> str:
        items = []
        for p in sorted(self.pieces, key=lambda p: -p.id)[:25]:
            f = p.fields
            comp = f.get("composer", "")
            link = f"http://www.mutopiaproject.org/cgibin/piece-info.cgi?id={p.id}"
            by = "" if comp in {"Anonymous", "Traditional"} else "by "
            items.append(
                f"<item><title>{html.escape(comp)}: {html.escape(f.get('title', ''))}</title><link>{link}</link>"
                f"<guid>{link}</guid><description>{html.escape(f.get('title', ''))}, {by}{html.escape(comp)} - "
                f"{html.escape(f.get('opus', ''))} for {html.escape(f.get('for', ''))}</description></item>"
            )
        return (
            '<?xml version="1.0"?>\n<rss version="2.0"><channel><title>The Mutopia Project</title>'
            "<link>http://www.mutopiaproject.org/</link><description>Free sheet music for everyone</description>"
            + "".join(items)
            + "</channel></rss>\n"
        )

    # --- HTTP -------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(
                Seen(time.monotonic(), h.command, h.path, {k.lower(): v for k, v in h.headers.items()})
            )
        if self.slow and h.path.startswith(self.slow_prefix):
            time.sleep(self.slow)
        split = urlsplit(h.path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        if path == "/robots.txt":
            if self.robots_status != 200 or self.robots is None:
                return self._send(
                    h, self.robots_status if self.robots is not None else 404, b"no robots\n", "text/plain"
                )
            return self._send(h, 200, self.robots.encode(), "text/plain")
        if (self.fail_prefix is not None and path.startswith(self.fail_prefix)) or self.fail_next > 0:
            with self._lock:
                self.fail_next = max(0, self.fail_next - 1)
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            return self._send(h, self.fail_status, b"busy\n", "text/plain", extra)
        if path == "/cgibin/make-table.cgi":
            return self._send(h, 200, self.make_table(query).encode(), "text/html; charset=utf-8")
        if path == "/cgibin/piece-info.cgi":
            return self._send(h, 200, self.piece_info(query).encode(), "text/html; charset=utf-8")
        if path == "/piece-list.html":
            return self._send(h, 200, self.piece_list().encode(), "text/html; charset=utf-8")
        if path == "/latestadditions.rss":
            return self._send(h, 200, self.rss().encode(), "application/rss+xml")
        rel = path.lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        data = None if (".." in rel.split("/") or name in self.missing_files) else self.file_bytes(rel)
        if data is None:
            return self._send(h, 404, b"<html><body>404 Not Found</body></html>", "text/html")
        headers: dict[str, str] = {}
        if self.validators:
            etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
            headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
            inm = h.headers.get("If-None-Match")
            ims = h.headers.get("If-Modified-Since")
            if inm is not None:
                if etag in [t.strip() for t in inm.split(",")]:
                    return self._send(h, 304, b"", None, headers)
            elif ims is not None and name not in self.changed:
                parsed = email.utils.parsedate_to_datetime(ims)
                if parsed >= email.utils.parsedate_to_datetime(LAST_MODIFIED):
                    return self._send(h, 304, b"", None, headers)
        ctype = (
            "application/zip"
            if name.endswith(".zip")
            else "audio/midi"
            if name.endswith(".mid")
            else "application/rdf+xml"
        )
        return self._send(h, 200, data, ctype, headers)

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            h.send_response(status)
            if ctype:
                h.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body) if status != 304 else 0))
            h.end_headers()
            if status != 304:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
