"""Inline SVG charts in plain Python: horizontal bars, histograms, a circle of fifths.

Each function takes the rows of one query and returns an ``<svg>`` string sized by its
``viewBox`` (it scales to its container). No JavaScript: a mark's ``<title>`` is its
tooltip. An empty input draws :func:`empty`, a framed "no data" message, so every figure is
still drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

WIDTH = 720
FONT = "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', 'Liberation Sans', sans-serif"
INK = "#1f2933"
MUTED = "#667085"
GRID = "#e4e7ec"
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
BLUE, ORANGE, GREEN, PINK, SKY, VERMILLION, YELLOW, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#98A2B3",
)
PALETTE = [BLUE, ORANGE, GREEN, PINK, SKY, VERMILLION, YELLOW, GREY]


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def fmt_num(x: float | int | None, digits: int = 3) -> str:
    """A compact number for labels: 1,234 / 12.3k / 4.5M / 0.25."""
    if x is None:
        return "–"
    x = float(x)
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.3g}G"
    if a >= 1e6:
        return f"{x / 1e6:.3g}M"
    if a >= 1e4:
        return f"{x / 1e3:.3g}k"
    if x == int(x):
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _svg(height: float, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" '
        f'height="{height:.0f}" role="img" aria-label="{esc(label)}" font-family="{esc(FONT)}" '
        f'font-size="12" fill="{INK}">' + "".join(body) + "</svg>"
    )


def _text(
    x: float,
    y: float,
    s: Any,
    anchor: str = "start",
    size: float = 12,
    fill: str = INK,
    weight: str = "normal",
    extra: str = "",
) -> str:
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{w}{extra}>'
        f"{esc(s)}</text>"
    )


def empty(message: str, hint: str = "") -> str:
    """The drawn empty state: a dashed frame with the message and what would fill it."""
    body = [
        f'<rect class="empty" x="1" y="1" width="{WIDTH - 2}" height="98" rx="8" fill="#f8f9fb" stroke="#cfd4dc" '
        'stroke-dasharray="6 4"/>',
        _text(WIDTH / 2, 46, message, "middle", 15, MUTED, "600"),
    ]
    if hint:
        body.append(_text(WIDTH / 2, 70, hint, "middle", 12, MUTED))
    return _svg(100, body, message)


def error(message: str) -> str:
    body = [
        f'<rect class="error" x="1" y="1" width="{WIDTH - 2}" height="78" rx="8" fill="#fef3f2" stroke="#f04438"/>',
        _text(WIDTH / 2, 36, "query failed", "middle", 15, "#b42318", "600"),
        _text(WIDTH / 2, 58, message[:110], "middle", 11, "#b42318"),
    ]
    return _svg(80, body, "query failed")


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for label, colour in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="11" height="11" rx="2" fill="{colour}"/>')
        out.append(_text(x + 16, y, label, size=12, fill=MUTED))
        x += 16 + 7.2 * len(label) + 18
    return out


def nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_ticks(hi: float, target: int = 4) -> list[float]:
    if hi <= 0:
        return [0.0]
    step = nice_step(hi, target)
    n = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(n + 1)]


# ------------------------------------------------------------------------- horizontal bars
@dataclass(frozen=True)
class Series:
    column: str
    label: str
    colour: str


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    fmt: Callable[[float], str] = fmt_num


def hbars(
    rows: Sequence[dict[str, Any]],
    label: Callable[[dict[str, Any]], str],
    panels: Sequence[Panel],
    title: str,
    max_rows: int = 40,
    detail: Callable[[dict[str, Any]], str] | None = None,
) -> str:
    """One row per category; one or more panels side by side, each a stacked bar of its series."""
    rows = list(rows)[:max_rows]
    labels = [label(r) for r in rows]
    label_w = min(240.0, max(60.0, 7.0 * max(min(len(s), 34) for s in labels) + 14)) if labels else 60.0
    legend = [(s.label, s.colour) for p in panels for s in p.series if len(p.series) > 1]
    top = 44 if legend else 26
    row_h = 22
    gap = 26
    avail = WIDTH - label_w - 8 - gap * (len(panels) - 1)
    panel_w = avail / len(panels)
    height = top + row_h * len(rows) + 26
    body: list[str] = []
    if legend:
        body += _legend(legend, label_w, 16)
    for i, text in enumerate(labels):
        y = top + i * row_h + row_h / 2 + 4
        shown = text if len(text) <= 34 else text[:33] + "…"
        body.append(_text(label_w - 8, y, shown, "end", 12, INK, extra=f' data-label="{esc(text)}"'))
    for k, panel in enumerate(panels):
        x0 = label_w + k * (panel_w + gap)
        totals = [sum(float(r.get(s.column) or 0) for s in panel.series) for r in rows]
        hi = max(totals, default=0.0)
        ticks = linear_ticks(hi, 3)
        vmax = ticks[-1] if ticks[-1] > 0 else 1.0
        bar_w = panel_w - 46  # room for the value label at the end of the longest bar
        scale = bar_w / vmax
        body.append(_text(x0, top - 8, panel.title, size=12, fill=MUTED, weight="600"))
        for t in ticks:
            x = x0 + t * scale
            body.append(
                f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{top + row_h * len(rows)}" stroke="{GRID}"/>'
            )
            body.append(_text(x, top + row_h * len(rows) + 16, panel.fmt(t), "middle", 10.5, MUTED))
        for i, r in enumerate(rows):
            y = top + i * row_h + 4
            x = x0
            for s in panel.series:
                v = float(r.get(s.column) or 0)
                if v <= 0:
                    continue
                w = max(v * scale, 1.5)
                tip = f"{labels[i]} · {s.label}: {panel.fmt(v)}"
                body.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{row_h - 8}" rx="2" '
                    f'fill="{s.colour}"><title>{esc(tip)}</title></rect>'
                )
                x += w
            body.append(_text(x + 4, y + row_h - 12, panel.fmt(totals[i]), size=11, fill=MUTED))
    if detail is not None:  # an invisible hook for tooltips on the whole row
        for i, r in enumerate(rows):
            y = top + i * row_h
            body.append(
                f'<rect x="0" y="{y}" width="{label_w:.0f}" height="{row_h}" fill="transparent">'
                f"<title>{esc(detail(r))}</title></rect>"
            )
    return _svg(height, body, title)


# ------------------------------------------------------------------------- histograms
def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if b - a <= 3 else (1,)
    return [m * 10**e for e in range(a, b + 1) for m in mults if lo <= m * 10**e <= hi]


DURATION_TICKS = [0.01, 0.1, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200]


def histogram(
    rows: Sequence[dict[str, Any]],
    title: str,
    x_label: str,
    y_label: str,
    count: str,
    log_x: bool,
    series: str | None = None,
    x_fmt: Callable[[float], str] = fmt_num,
    ticks: Sequence[float] | None = None,
) -> str:
    """Bars from ``lo`` to ``hi`` of height ``count``; with ``series``, one outline per series."""
    rows = [r for r in rows if r["lo"] is not None and r["hi"] is not None and (not log_x or r["lo"] > 0)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r[series]) if series else "", []).append(r)
    lo = min(float(r["lo"]) for r in rows)
    hi = max(float(r["hi"]) for r in rows)
    if log_x:
        lo, hi = 10 ** (math.floor(math.log10(lo) * 4) / 4), 10 ** (math.ceil(math.log10(hi) * 4) / 4)
    if hi <= lo:
        hi = lo + 1
    legend = [(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(groups)] if series else []
    left, right, top, bottom = 56, 16, (40 if legend else 18), 46
    height = 280
    pw, ph = WIDTH - left - right, height - top - bottom

    def sx(v: float) -> float:
        if log_x:
            return left + (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * pw
        return left + (v - lo) / (hi - lo) * pw

    ymax_raw = max(float(r[count]) for r in rows)
    yt = linear_ticks(ymax_raw, 4)
    ymax = yt[-1] or 1.0

    def sy(v: float) -> float:
        return top + ph - v / ymax * ph

    body: list[str] = []
    if legend:
        body += _legend(legend, left, 16)
    for t in yt:
        body.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{WIDTH - right}" y2="{sy(t):.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, sy(t) + 4, fmt_num(t), "end", 10.5, MUTED))
    if ticks is None:
        xt = _log_ticks(lo, hi) if log_x else linear_ticks(hi - lo, 6)
        if not log_x:
            xt = [lo + t for t in xt if lo + t <= hi + 1e-9]
    else:
        xt = [t for t in ticks if lo <= t <= hi]
    for t in xt:
        x = sx(t)
        body.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="{MUTED}"/>')
        body.append(_text(x, top + ph + 16, x_fmt(t), "middle", 10.5, MUTED))
    body.append(f'<line x1="{left}" y1="{top + ph}" x2="{WIDTH - right}" y2="{top + ph}" stroke="{MUTED}"/>')
    body.append(_text(left + pw / 2, height - 8, x_label + (" (log scale)" if log_x else ""), "middle", 11.5, MUTED))
    body.append(
        _text(14, top + ph / 2, y_label, "middle", 11.5, MUTED, extra=f' transform="rotate(-90 14 {top + ph / 2:.1f})"')
    )
    for gi, (name, rs) in enumerate(groups.items()):
        colour = PALETTE[gi % len(PALETTE)]
        rs = sorted(rs, key=lambda r: float(r["lo"]))
        if len(groups) == 1:
            for r in rs:
                x1, x2 = sx(float(r["lo"])), sx(float(r["hi"]))
                v = float(r[count])
                tip = f"{x_fmt(float(r['lo']))} – {x_fmt(float(r['hi']))}: {fmt_num(v)} {y_label}"
                body.append(
                    f'<rect x="{x1 + 0.5:.1f}" y="{sy(v):.1f}" width="{max(x2 - x1 - 1, 1):.1f}" '
                    f'height="{top + ph - sy(v):.1f}" fill="{colour}" fill-opacity="0.85">'
                    f"<title>{esc(tip)}</title></rect>"
                )
        else:  # outlines, so that series overlap readably
            d = []
            for r in rs:
                x1, x2, y = sx(float(r["lo"])), sx(float(r["hi"])), sy(float(r[count]))
                d.append(f"M{x1:.1f},{top + ph:.1f}V{y:.1f}H{x2:.1f}V{top + ph:.1f}")
            body.append(
                f'<path d="{"".join(d)}" fill="{colour}" fill-opacity="0.12" stroke="{colour}" '
                f'stroke-width="1.6"><title>{esc(name)}</title></path>'
            )
    return _svg(height, body, title)


# ------------------------------------------------------------------------- circle of fifths
MAJOR_NAMES = ["C", "G", "D", "A", "E", "B", "F♯", "D♭", "A♭", "E♭", "B♭", "F"]
MINOR_NAMES = ["a", "e", "b", "f♯", "c♯", "g♯", "e♭", "b♭", "f", "c", "g", "d"]


def fifths_index(tonic_pc: int, mode: str) -> int:
    """Position on the circle (0 = C major / A minor at the top, clockwise by fifths)."""
    pc = tonic_pc if mode == "major" else tonic_pc + 3  # a minor key sits with its relative major
    return (pc * 7) % 12


def circle_of_fifths(rows: Sequence[dict[str, Any]], title: str) -> str:
    """Major keys on the outer ring, minor keys on the inner ring; a disc's area is its count."""
    counts = {"major": [0] * 12, "minor": [0] * 12}
    other = 0
    for r in rows:
        mode, pc, n = r["mode"], r["tonic_pc"], int(r["pieces"] or 0)
        if mode in counts and pc is not None:
            counts[mode][fifths_index(int(pc), mode)] += n
        else:
            other += n
    n_major, n_minor = sum(counts["major"]), sum(counts["minor"])
    cmax = max(counts["major"] + counts["minor"]) or 1
    height = 440
    cx, cy = 230, 220
    r_major, r_minor, r_max = 170, 100, 27.0
    body = [
        f'<circle cx="{cx}" cy="{cy}" r="{r_major + 36}" fill="#f5f8fc" stroke="{GRID}"/>',
        f'<circle cx="{cx}" cy="{cy}" r="{(r_major + r_minor) / 2}" fill="#fdf8ef" stroke="{GRID}"/>',
        f'<circle cx="{cx}" cy="{cy}" r="{r_minor - 34}" fill="#ffffff" stroke="{GRID}"/>',
    ]
    for i in range(12):
        a = math.radians(i * 30 - 90 + 15)
        body.append(
            f'<line x1="{cx + (r_minor - 34) * math.cos(a):.1f}" y1="{cy + (r_minor - 34) * math.sin(a):.1f}" '
            f'x2="{cx + (r_major + 36) * math.cos(a):.1f}" y2="{cy + (r_major + 36) * math.sin(a):.1f}" '
            f'stroke="{GRID}"/>'
        )
    for mode, radius, names, colour in (("major", r_major, MAJOR_NAMES, BLUE), ("minor", r_minor, MINOR_NAMES, ORANGE)):
        for i in range(12):
            a = math.radians(i * 30 - 90)
            x, y = cx + radius * math.cos(a), cy + radius * math.sin(a)
            n = counts[mode][i]
            key = names[i] + (" major" if mode == "major" else " minor")
            if n:
                rr = max(3.0, r_max * math.sqrt(n / cmax))
                body.append(
                    f'<circle class="key" cx="{x:.1f}" cy="{y:.1f}" r="{rr:.1f}" fill="{colour}" '
                    f'fill-opacity="0.78" stroke="{colour}"><title>{esc(key)}: {n} pieces</title></circle>'
                )
            else:
                body.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="none" stroke="{GREY}" '
                    f'stroke-dasharray="2 2"><title>{esc(key)}: 0 pieces</title></circle>'
                )
            # the name outside the disc: further out on the major ring, further in on the minor ring
            out = (r_max + 8) if mode == "major" else -(r_max + 6)
            lx, ly = cx + (radius + out) * math.cos(a), cy + (radius + out) * math.sin(a)
            body.append(_text(lx, ly + 4, names[i], "middle", 13 if mode == "major" else 12, INK, "600"))
            if n:
                body.append(
                    _text(
                        x,
                        y + 4,
                        fmt_num(n),
                        "middle",
                        10.5,
                        "#ffffff" if n / cmax > 0.15 else INK,
                        "600" if n / cmax > 0.15 else "normal",
                    )
                )
    # a summary beside the circle: the major/minor split
    x0, total = 480, n_major + n_minor + other
    body.append(_text(x0, 90, "Mode", size=13, weight="600"))
    for k, (name, n, colour) in enumerate(
        (("major", n_major, BLUE), ("minor", n_minor, ORANGE), ("no key", other, GREY))
    ):
        y = 120 + k * 44
        w = 200 * n / total if total else 0
        body.append(f'<rect x="{x0}" y="{y}" width="200" height="14" rx="3" fill="{GRID}"/>')
        if w:
            body.append(
                f'<rect x="{x0}" y="{y}" width="{max(w, 1.5):.1f}" height="14" rx="3" fill="{colour}">'
                f"<title>{esc(name)}: {n}</title></rect>"
            )
        pct = f" ({100 * n / total:.0f}%)" if total else ""
        body.append(_text(x0, y - 5, f"{name}: {fmt_num(n)} pieces{pct}", size=12, fill=INK))
    notes = [
        "Major keys on the outer ring (C, G, D ...),",
        "minor keys on the inner ring (a, e, b ...).",
        "A disc's area is proportional to the",
        "number of pieces in that key. Neighbours",
        "differ by one sharp or flat; each minor",
        "key sits beside its relative major.",
    ]
    for k, line in enumerate(notes):
        body.append(_text(x0, 272 + k * 16, line, size=11, fill=MUTED))
    return _svg(height, body, title)
