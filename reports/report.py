"""The HTML corpus report (``midicorpus report``): one static page, figures beside their SQL.

Every figure is the answer to one query kept in ``reports/<name>.sql`` and is drawn as
inline SVG (:mod:`reports.svg`), so the page needs no network, no JavaScript and no plotting
library, and a reader can paste the query into ``midicorpus sql`` to get the numbers. A
figure with no data still draws a framed "no data" message that says which command fills it.

The report is written to a temporary directory beside ``out_dir`` and renamed into place:
a reader sees the previous report or the new one, never a half-written page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from corpus.progress import Step
from reports import svg
from reports.svg import BLUE, GREEN, GREY, ORANGE, PINK, VERMILLION, Panel, Series, fmt_num

QUERIES = Path(__file__).parent
MARKER = ".midicorpus-report"  # marks a directory this module wrote (safe to replace)

Rows = list[dict[str, Any]]


class ReportError(Exception):
    """A problem with the output directory a user can act on (one line)."""


@dataclass(frozen=True)
class Figure:
    """One figure: its query is ``reports/<name>.sql``; ``draw`` turns the rows into SVG."""

    name: str
    title: str
    caption: str
    draw: Callable[[Rows], str]
    empty_hint: str
    table: Callable[[Rows], str] | None = None  # an HTML table drawn under the chart

    @property
    def sql_path(self) -> Path:
        return QUERIES / f"{self.name}.sql"

    def sql(self) -> str:
        return self.sql_path.read_text()


# ------------------------------------------------------------------------- drawing per figure
def _hours(v: float) -> str:
    return fmt_num(round(v, 2) if v < 10 else round(v, 1))


def _draw_sources(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: f"{r['source']} · {r['license']}",
        [
            Panel(
                "source items",
                (
                    Series("ok", "ok", BLUE),
                    Series("rejected", "rejected", VERMILLION),
                    Series("duplicate", "duplicate bytes", GREY),
                ),
            ),
            Panel("hours of music", (Series("hours", "hours", GREEN),), _hours),
        ],
        "pieces and hours per source and licence",
    )


def _by_source(rows: Rows, unit: str, series: tuple[Series, ...], title: str) -> str:
    """One stacked bar per source (the row whose source is NULL: all sources)."""
    return svg.hbars(
        rows,
        lambda r: "all sources" if r["source"] is None else str(r["source"]),
        [Panel(unit, series)],
        title,
    )


def _draw_texture(rows: Rows) -> str:
    return _by_source(
        rows,
        "pieces",
        (
            Series("monophonic", "monophonic", BLUE),
            Series("polyphonic", "polyphonic", ORANGE),
            Series("drums_only", "drums only", GREEN),
            Series("other", "empty / not curated", GREY),
        ),
        "monophonic and polyphonic pieces",
    )


def _draw_expressive(rows: Rows) -> str:
    return _by_source(
        rows,
        "pieces",
        (
            Series("expressive", "expressive (performed)", VERMILLION),
            Series("quantized", "quantized", BLUE),
            Series("undecided", "undecided / not curated", GREY),
        ),
        "expressive and quantized pieces",
    )


def _draw_roles(rows: Rows) -> str:
    return _by_source(
        rows,
        "tracks",
        (
            Series("melody", "melody", VERMILLION),
            Series("bass", "bass", BLUE),
            Series("chords", "chords", ORANGE),
            Series("drums", "drums", GREEN),
            Series("other", "other", PINK),
            Series("undecided", "not curated", GREY),
        ),
        "tracks per role",
    )


def _draw_chord_qualities(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: "no chord (N)" if r["quality"] == "N" else str(r["quality"]),
        [
            Panel("beats", (Series("beats", "beats", ORANGE),)),
            Panel("pieces", (Series("pieces", "pieces", BLUE),)),
        ],
        "beats and pieces per chord quality",
    )


def _draw_progressions(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: str(r["progression"]),
        [Panel("pieces", (Series("pieces", "pieces", VERMILLION),))],
        "pieces per most common 4-chord progression",
    )


def _draw_keys(rows: Rows) -> str:
    return svg.circle_of_fifths(rows, "key distribution on the circle of fifths")


def _draw_duration(rows: Rows) -> str:
    return svg.histogram(
        rows,
        "duration histogram",
        "duration",
        "pieces",
        "pieces",
        log_x=True,
        x_fmt=svg.fmt_duration,
        ticks=svg.DURATION_TICKS,
    )


def _draw_notes(rows: Rows) -> str:
    return svg.histogram(rows, "notes histogram", "notes per piece", "pieces", "pieces", log_x=True)


def _draw_tempo(rows: Rows) -> str:
    return svg.histogram(rows, "tempo histogram", "first tempo (bpm)", "pieces", "pieces", log_x=False)


def _draw_programs(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: str(r["family"]),
        [Panel("tracks", (Series("tracks", "tracks", BLUE),)), Panel("pieces", (Series("pieces", "pieces", GREEN),))],
        "tracks per instrument family",
    )


def _draw_tokens(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: f"{r['scheme']} · {str(r['tokenizer_hash'] or '')[:8]}",
        [
            Panel("pieces", (Series("pieces", "tokenized", BLUE), Series("rejected", "rejected", VERMILLION))),
            Panel("tokens", (Series("tokens", "tokens", GREEN),)),
        ],
        "tokens per scheme",
        detail=lambda r: (
            f"{r['scheme']} {r['tokenizer_hash']}: vocabulary {fmt_num(r['vocab_size'])}, {fmt_num(r['rows'])} rows"
        ),
    )


def _draw_sequence_lengths(rows: Rows) -> str:
    return svg.histogram(
        rows, "sequence lengths", "tokens per sequence", "sequences", "sequences", log_x=True, series="scheme"
    )


def _draw_rejects(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: f"{r['stage']} · {r['reason']}",
        [Panel("rejected items", (Series("n", "rejected", VERMILLION),))],
        "rejects by stage and reason",
        detail=lambda r: f"e.g. {r['example']}: {r['detail']}",
    )


def _rejects_table(rows: Rows) -> str:
    body = "".join(
        f"<tr><td><code>{escape(str(r['stage']))}</code></td><td><code>{escape(str(r['reason']))}</code></td>"
        f'<td class=num>{fmt_num(r["n"])}</td><td class=ex title="{escape(str(r["example"] or ""))}">'
        f"{escape(_clip(_basename(r['example']), 48))}</td><td>{escape(_clip(r['detail'], 90))}</td></tr>"
        for r in rows[:40]
    )
    return (
        "<table class=examples><thead><tr><th>stage</th><th>reason</th><th>n</th><th>example</th>"
        f"<th>detail</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _basename(value: Any) -> str:
    return "" if value is None else str(value).rstrip("/").rsplit("/", 1)[-1]


def _clip(value: Any, n: int) -> str:
    s = "" if value is None else str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def _dedup_label(r: dict[str, Any]) -> str:
    lo, hi = int(r["lo"]), int(r["hi"])
    if lo == hi == 1:
        return "1 piece (unique)"
    return f"{lo} pieces" if lo == hi else f"{lo}–{hi} pieces"


def _draw_dedup(rows: Rows) -> str:
    return svg.hbars(
        rows,
        _dedup_label,
        [
            Panel("clusters", (Series("clusters", "clusters", BLUE),)),
            Panel("pieces in them", (Series("pieces", "pieces", GREEN),)),
        ],
        "dedup cluster sizes",
    )


def _draw_songs(rows: Rows) -> str:
    shared = rows[0]["pct_in_groups_of_2_plus"] if rows else 0
    return svg.hbars(
        rows,
        _dedup_label,
        [
            Panel("song groups", (Series("clusters", "groups", BLUE),)),
            Panel("pieces in them", (Series("pieces", "pieces", GREEN),)),
        ],
        f"song group sizes ({shared or 0}% of pieces share their song with another piece)",
    )


def _draw_snapshots(rows: Rows) -> str:
    return svg.hbars(
        rows,
        lambda r: f"{r['name']} @ {str(r['version'])[:12]}",
        [
            Panel(
                "pieces per split",
                (Series("train", "train", BLUE), Series("valid", "valid", ORANGE), Series("test", "test", GREEN)),
            ),
            Panel("tokens", (Series("n_tokens", "tokens", PINK),)),
        ],
        "snapshot versions",
        detail=lambda r: f"{r['name']}@{r['version']} ({r['scheme']}), created {r['created_at']}",
    )


figures: list[Figure] = [
    Figure(
        "sources",
        "Pieces and hours per source and licence",
        "Every source item: new pieces that parsed, rejected ones (bytes seen before included), and items whose bytes were an ok piece already in "
        "the lake. Hours count each parsed piece once, under the source that brought it in.",
        _draw_sources,
        "ingest a source: midicorpus ingest dir PATH",
    ),
    Figure(
        "texture",
        "Monophonic vs polyphonic",
        "Texture of each parsed piece (curate): monophonic when no two notes of a track sound at once.",
        _draw_texture,
        "ingest and curate: midicorpus curate",
    ),
    Figure(
        "expressive",
        "Performed or quantized",
        "Each curated piece by its onsets (rule nomml-v1): expressive when the median onset lies on no metrical "
        "grid down to 1/64 of a quarter (a recorded performance), quantized when it keeps a grid (notation "
        "software, step sequencers). Per track in tracks.expressive.",
        _draw_expressive,
        "ingest and curate: midicorpus curate",
    ),
    Figure(
        "roles",
        "Track roles",
        "What each track with notes does (rule roles-v1, from register, polyphony, density, channel 10, program "
        "and the skyline; never the track name): one melody at most per piece, bass, chords, drums, other.",
        _draw_roles,
        "ingest and curate: midicorpus curate",
    ),
    Figure(
        "chord_qualities",
        "Chord qualities",
        "Every beat of every curated piece labelled with a root, quality and bass from its sounding pitch "
        "classes (rule chords-v1; table chords, one row per harmonic change): beats per quality, and the "
        "pieces where it occurs.",
        _draw_chord_qualities,
        "ingest and curate: midicorpus curate",
    ),
    Figure(
        "progressions",
        "Most common progressions",
        "Each piece's most frequent run of four chord degrees in its estimated key (features.chord_progression), "
        "counted over pieces: the 20 most common.",
        _draw_progressions,
        "ingest and curate: midicorpus curate",
    ),
    Figure(
        "keys",
        "Key distribution",
        "The estimated key of each piece on the circle of fifths: major keys outside, minor keys inside.",
        _draw_keys,
        "curate estimates keys: midicorpus curate",
    ),
    Figure(
        "duration",
        "Duration",
        "Length of each parsed piece, log-spaced bins.",
        _draw_duration,
        "ingest and curate some pieces",
    ),
    Figure(
        "notes",
        "Notes per piece",
        "Notes over all tracks, drums included, log-spaced bins.",
        _draw_notes,
        "ingest and curate some pieces",
    ),
    Figure(
        "tempo",
        "Tempo",
        "The first tempo of each piece in 10 bpm bins; files that declare none count as 120.",
        _draw_tempo,
        "ingest and curate some pieces",
    ),
    Figure(
        "programs",
        "Instruments and drums",
        "Tracks per General MIDI instrument family (program ÷ 8), drum tracks apart, and the pieces that have them.",
        _draw_programs,
        "ingest some pieces",
    ),
    Figure(
        "tokens",
        "Tokens per scheme",
        "Pieces tokenized and rejected per scheme and tokenizer, and the tokens they hold.",
        _draw_tokens,
        "tokenize: midicorpus tokenize --scheme remi",
    ),
    Figure(
        "sequence_lengths",
        "Sequence lengths",
        "Tokens per sequence, per scheme, log-spaced bins.",
        _draw_sequence_lengths,
        "tokenize: midicorpus tokenize --scheme remi",
    ),
    Figure(
        "rejects",
        "Rejects by stage and reason",
        "Items that did not go on, per stage and reason code, with the first example of each.",
        _draw_rejects,
        "nothing has been rejected",
        table=_rejects_table,
    ),
    Figure(
        "dedup",
        "Duplicate clusters",
        "Sizes of the near-duplicate clusters of the latest curate run; a unique piece is a cluster of one.",
        _draw_dedup,
        "curate clusters duplicates: midicorpus curate",
    ),
    Figure(
        "songs",
        "Song groups",
        "Sizes of the song groups (rule song-v1: arrangements, covers, transcriptions, extracted melodies and "
        "copies of one composition); splits are assigned per song group.",
        _draw_songs,
        "curate groups songs: midicorpus curate",
    ),
    Figure(
        "snapshots",
        "Snapshot versions",
        "Every snapshot version, oldest first, with its splits and tokens.",
        _draw_snapshots,
        "create one: midicorpus snapshot create NAME --scheme remi",
    ),
]


# ------------------------------------------------------------------------- running the queries
@dataclass
class Drawn:
    figure: Figure
    rows: Rows = field(default_factory=list)
    svg: str = ""
    error: str | None = None
    ms: float = 0.0

    @property
    def is_empty(self) -> bool:
        return self.error is None and not self.rows


def _run(con: Any, sql: str) -> Rows:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def draw(con: Any, fig: Figure) -> Drawn:
    import duckdb

    d = Drawn(fig)
    t0 = time.perf_counter()
    try:
        d.rows = _run(con, fig.sql())
    except duckdb.Error as exc:  # shown in the figure's place; the other figures still render
        d.error = " ".join(str(exc).split())
    d.ms = (time.perf_counter() - t0) * 1000
    if d.error is not None:
        d.svg = svg.error(d.error)
    elif not d.rows:
        d.svg = svg.empty("no data", d.figure.empty_hint)
    else:
        d.svg = fig.draw(d.rows)
    return d


# ------------------------------------------------------------------------- the page
CSS = """
:root { --ink:#1f2933; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.5 system-ui,-apple-system,'Segoe UI','DejaVu Sans','Liberation Sans',sans-serif; }
header { background:#101828; color:#f2f4f7; padding:28px 40px 20px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; letter-spacing:-0.01em; }
header .meta { margin:0; color:#98a2b3; font-size:13px; }
header code { color:#d0d5dd; }
.kpis { display:flex; flex-wrap:wrap; gap:12px; margin:20px 0 14px; }
.kpi { background:#1d2939; border-radius:10px; padding:10px 16px; min-width:128px; }
.kpi b { display:block; font-size:22px; font-weight:650; color:#fff; }
.kpi span { font-size:12px; color:#98a2b3; }
nav { display:flex; flex-wrap:wrap; gap:6px 14px; font-size:13px; }
nav a { color:#84caff; text-decoration:none; }
nav a:hover { text-decoration:underline; }
main { max-width:1280px; margin:0 auto; padding:24px 24px 60px; }
figure { margin:0 0 22px; background:var(--card); border:1px solid var(--line); border-radius:12px;
  padding:18px 20px; display:grid; grid-template-columns:minmax(0,640px) minmax(0,1fr); gap:8px 24px; }
figcaption { grid-column:1 / -1; }
figcaption h2 { margin:0; font-size:17px; font-weight:650; }
figcaption p { margin:2px 0 6px; color:var(--muted); }
.chart svg { width:100%; height:auto; display:block; }
.sqlcol { position:relative; min-width:0; min-height:260px; }
.sqlcol details { position:absolute; inset:0; overflow:auto; }
details.sql summary { cursor:pointer; color:var(--muted); font-size:12px; margin-bottom:6px; position:sticky; top:0;
  background:var(--card); }
details.sql summary code { color:var(--ink); }
pre { margin:0; background:#0f172a; color:#e2e8f0; border-radius:8px; padding:12px 14px; font-size:11.5px;
  line-height:1.45; white-space:pre-wrap; overflow-wrap:anywhere; }
pre .c { color:#94a3b8; }
.note { font-size:12px; color:var(--muted); margin-top:6px; }
table.examples { width:100%; border-collapse:collapse; margin-top:12px; font-size:12px; }
table.examples th { text-align:left; color:var(--muted); font-weight:600; border-bottom:1px solid var(--line);
  padding:4px 6px; }
table.examples td { border-bottom:1px solid var(--line); padding:4px 6px; vertical-align:top; }
table.examples td.num { text-align:right; font-variant-numeric:tabular-nums; }
table.examples td.ex { overflow-wrap:anywhere; color:var(--muted); }
footer { text-align:center; color:var(--muted); font-size:12px; padding:0 0 30px; }
@media (max-width: 1100px) { figure { grid-template-columns:minmax(0,1fr); }
  .sqlcol { min-height:0; } .sqlcol details { position:static; } }
"""


def _sql_html(sql: str) -> str:
    """The query, with its comment lines dimmed."""
    out = []
    for line in sql.rstrip().splitlines():
        e = escape(line)
        out.append(f'<span class="c">{e}</span>' if line.lstrip().startswith("--") else e)
    return "\n".join(out)


def _figure_html(d: Drawn) -> str:
    f = d.figure
    state = "error" if d.error else "empty" if d.is_empty else "ok"
    note = f"{len(d.rows)} rows · {d.ms:.0f} ms" if d.error is None else "query failed"
    extra = f.table(d.rows) if f.table and d.rows else ""
    return (
        f'<figure id="{f.name}" data-figure="{f.name}" data-state="{state}" data-empty="{str(d.is_empty).lower()}">'
        f"<figcaption><h2>{escape(f.title)}</h2><p>{escape(f.caption)}</p></figcaption>"
        f'<div class="chart">{d.svg}{extra}</div>'
        f'<div class="sqlcol"><details class="sql" open><summary>SQL · <code>reports/{f.name}.sql</code> · {note}'
        f"</summary><pre><code>{_sql_html(f.sql())}</code></pre></details></div>"
        "</figure>"
    )


KPIS = [
    ("source_items", "source items"),
    ("pieces_ok", "parsed pieces"),
    ("hours", "hours of music"),
    ("rejected", "rejected"),
    ("duplicate_items", "duplicate items"),
    ("dedup_clusters", "dedup clusters"),
    ("song_groups", "song groups"),
    ("schemes", "token schemes"),
    ("snapshot_versions", "snapshot versions"),
]


def _no_progress(step: Step) -> None:
    pass


def render(con: Any, lake_root: str, progress: Callable[[Step], None] = _no_progress) -> tuple[str, list[Drawn]]:
    """The page's HTML and the drawn figures (rows included); ``progress`` is told each query run
    (the figures' and the overview's) of their number."""
    step = Step(0, len(figures) + 1)
    drawn = []
    for f in figures:
        step.what = f.name
        progress(step)
        drawn.append(draw(con, f))
        step.done += 1
    step.what = "overview"
    progress(step)
    overview = _run(con, (QUERIES / "overview.sql").read_text())[0]
    step.done += 1
    step.what = "writing the page"
    progress(step)
    kpis = "".join(
        f"<div class=kpi><b>{_hours(overview[k]) if k == 'hours' else fmt_num(overview[k])}</b>"
        f"<span>{escape(label)}</span></div>"
        for k, label in KPIS
    )
    nav = "".join(f'<a href="#{d.figure.name}">{escape(d.figure.title)}</a>' for d in drawn)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>midicorpus report</title><style>{CSS}</style></head><body>"
        "<header><h1>Corpus report</h1>"
        f'<p class="meta">lake <code>{escape(lake_root)}</code> · generated {when} · every figure is the '
        "answer to the SQL beside it (<code>midicorpus sql</code> runs it too)</p>"
        f'<section class="kpis" title="reports/overview.sql">{kpis}</section><nav>{nav}</nav></header>'
        "<main>" + "".join(_figure_html(d) for d in drawn) + "</main>"
        "<footer>midicorpus · static report, no scripts, no network</footer></body></html>\n"
    )
    return html, drawn


# ------------------------------------------------------------------------- writing
def _check_out(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ReportError(f"--out {str(out)!r} is a file; give a directory (new, empty, or an earlier report)")
    if (out / MARKER).exists() or not any(out.iterdir()):
        return
    raise ReportError(f"--out {str(out)!r} is a non-empty directory that is not a report; give a new or empty one")


def _write(path: Path, data: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_report(lake: Any, out_dir: str | os.PathLike[str], progress: Callable[[Step], None] = _no_progress) -> Path:
    """Write ``index.html`` (and ``figures.json``, the rows of each figure) to ``out_dir``,
    atomically; return the path of ``index.html``. Works on an empty or missing lake.
    ``progress`` follows the queries (see :func:`render`)."""
    out = Path(out_dir).absolute()
    _check_out(out)
    progress(Step(0, len(figures) + 1, "opening the lake"))
    con = lake.connect()
    try:
        html, drawn = render(con, lake.location, progress)
    finally:
        con.close()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise ReportError(f"cannot write the report to {str(out)!r}: {exc.strerror or exc}") from None
    try:
        _write(tmp / "index.html", html)
        data = {d.figure.name: {"sql": f"reports/{d.figure.name}.sql", "error": d.error, "rows": d.rows} for d in drawn}
        _write(tmp / "figures.json", json.dumps(data, indent=1, default=str) + "\n")
        _write(tmp / MARKER, "written by midicorpus report; the whole directory is replaced on the next run\n")
        if out.exists():  # swap: the old report moves aside, the new one takes its name
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"
