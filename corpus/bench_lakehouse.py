"""The lakehouse benchmark: the commands of a scheduled corpus, run as a user runs them.

``midicorpus bench --lakehouse N`` (``bench --scale`` runs it with N = 20,000) generates
``N + delta`` synthetic files (:mod:`corpus.synth`), then runs, each as its own ``midicorpus`` process on a fresh lake: ingest of N, curate, tokenize REMI, the nightly delta
(ingest ``delta`` new files, curate, tokenize), curate again with nothing new,
``snapshot create``, two report-style ``sql`` queries and ``lake maintain``. Every row is the
command's wall time and the driver's peak RSS, sampled from outside (``/proc/<pid>/status``
every 50 ms, the ``midicorpus`` process itself: the Dask workers are reported by the scale run
of :mod:`corpus.bench`). With ``--lakehouse 176581`` this is the Lakh-sized run of the lakehouse issue
(about an hour on 2 cores, most of it the first ingest and curate).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Echo = Callable[[str], None]
LAKH_FULL = 176_581
SQL_QUERIES = (
    "SELECT texture, count(*) AS n, avg(n_notes) AS notes FROM features GROUP BY ALL ORDER BY n DESC",
    "SELECT p.source, count(DISTINCT f.song_group) AS songs, count(*) AS pieces FROM features f "
    "JOIN pieces p USING (piece_id) GROUP BY ALL",
)


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` itself (not its children), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_command(argv: Sequence[str], env: dict[str, str] | None = None, every: float = 0.05) -> dict[str, Any]:
    """Run ``argv``; its wall time, exit status, last output line, peak RSS (MB) and CPU seconds,
    sampled from outside."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    peak = [0]
    cpu = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            kb = _rss_kb(proc.pid)
            if kb is not None and kb > peak[0]:
                peak[0] = kb
            c = _cpu_s(proc.pid)
            if c is not None:
                cpu[0] = c
            done.wait(every)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    wall = time.perf_counter() - t0
    lines = [ln for ln in (out or "").splitlines() if ln.strip()]
    return {
        "argv": list(argv),
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "driver_peak_rss_mb": round(peak[0] / 1024, 1),
        "driver_cpu_s": round(cpu[0], 2),  # the command's own process, to its last sample (the workers are others)
        "last_line": lines[-1] if lines else "",
        "output": out if proc.returncode else None,
    }


def _generate(src_dir: Path, work: Path, n: int, delta: int, seed: int, echo: Echo) -> tuple[Path, Path]:
    """``N`` files in ``work/base``, ``delta`` more (the next pieces of the same generator) in ``work/delta``."""
    from corpus.synth import Generator

    base, new = work / "base", work / "delta"
    stamp = work / "generated.json"
    want = {"n": n, "delta": delta, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        echo(f"lakehouse: reusing the {n} + {delta} synthetic files in {work}")
        return base, new
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)
    t0 = time.perf_counter()
    gen = Generator(src_dir, seed)
    for folder, count, start in ((base, n, 0), (new, delta, n)):
        folder.mkdir(parents=True)
        for name, data in gen.iter_bytes(count, start):
            (folder / name).write_bytes(data)
    stamp.write_text(json.dumps(want))
    echo(f"lakehouse: generated {n} + {delta} synthetic files in {time.perf_counter() - t0:.0f} s")
    return base, new


def run_lakehouse(
    n: int = 20_000,
    delta: int = 200,
    src_dir: Path | None = None,
    workers: int = 2,
    work_dir: Path | None = None,
    seed: int = 0,
    out: Path | None = None,
    echo: Echo = print,
    keep: bool = False,
) -> dict[str, Any]:
    """The table of the lakehouse issue for a lake of ``n`` synthetic pieces (see the module docstring)."""
    if src_dir is None:
        src_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if n < 1 or delta < 1:
        raise ValueError(f"n and delta must be positive, got {n}, {delta}")
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="midicorpus-lakehouse-"))
        work_dir = tmp
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        base, new = _generate(Path(src_dir), work_dir, n, delta, seed, echo)
        lake = work_dir / "lake"
        shutil.rmtree(lake, ignore_errors=True)
        env = dict(os.environ)
        cli = [sys.executable, "-m", "corpus.cli", "--lake", str(lake), "--workers", str(workers)]
        steps: list[tuple[str, list[str]]] = [
            (f"ingest dir ({n} files)", ["ingest", "dir", str(base), "--source", "synthetic"]),
            ("curate", ["curate"]),
            ("tokenize remi", ["tokenize", "--scheme", "remi"]),
            (f"nightly delta: ingest {delta} new files", ["ingest", "dir", str(new), "--source", "synthetic"]),
            ("nightly delta: curate", ["curate"]),
            ("nightly delta: tokenize", ["tokenize", "--scheme", "remi"]),
            ("curate again with nothing new", ["curate"]),
            ("snapshot create", ["snapshot", "create", "bench", "--scheme", "remi"]),
            ("sql (report-style query 1)", ["sql", SQL_QUERIES[0]]),
            ("sql (report-style query 2)", ["sql", SQL_QUERIES[1]]),
            ("lake maintain", ["lake", "maintain"]),
        ]
        for label, args in steps:
            r = run_command([*cli, *args], env)
            r["step"] = label
            rows.append(r)
            echo(f"  {label}: {r['wall_s']:.1f} s, driver peak {r['driver_peak_rss_mb']:.0f} MB (exit {r['rc']})")
            if r["rc"] != 0:
                echo(r["output"] or "")
                break
    finally:
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"n": n, "delta": delta, "workers": workers, "seed": seed, "rows": rows}
    echo(format_table(result))
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"lakehouse run, N = {result['n']} synthetic pieces, {result['workers']} workers",
        "| step | wall | driver peak RSS | driver CPU |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        mark = "" if r["rc"] == 0 else f" (exit {r['rc']})"
        cpu = r.get("driver_cpu_s")
        lines.append(
            f"| {r['step']} | {r['wall_s']:.1f} s{mark} | {r['driver_peak_rss_mb']:,.0f} MB | "
            + ("-" if cpu is None else f"{cpu:.1f} s")
            + " |"
        )
    return "\n".join(lines)


def _key(step: str) -> str:
    """A step's label without its sizes ("ingest dir (176581 files)" and "(20000 files)" are one step)."""
    return re.sub(r"\d+(?= (new )?files)", "N", step)


def compare(small: dict[str, Any], large: dict[str, Any]) -> str:
    """Ratios large/small per step (the issue's "+-20% of the same command on a 20k lake")."""
    by = {_key(r["step"]): r for r in small["rows"]}
    lines = [f"| step | wall {large['n']} / {small['n']} | peak RSS {large['n']} / {small['n']} |", "|---|---|---|"]
    for r in large["rows"]:
        s = by.get(_key(r["step"]))
        if s and s["wall_s"] and s["driver_peak_rss_mb"]:
            lines.append(
                f"| {r['step']} | {r['wall_s'] / s['wall_s']:.2f}x | {r['driver_peak_rss_mb'] / s['driver_peak_rss_mb']:.2f}x |"
            )
    return "\n".join(lines)


def run_nightly(lake: str, delta_dir: str, workers: int = 2, curate_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One more night on an existing lake, each command its own process sampled from outside:
    ``ingest dir DELTA_DIR``, ``curate`` (the delta), ``curate`` again (nothing new)."""
    cli = [sys.executable, "-m", "corpus.cli", "--lake", lake, "--workers", str(workers)]
    steps = [
        (f"nightly delta: ingest {delta_dir}", ["ingest", "dir", delta_dir, "--source", "synthetic"]),
        ("nightly delta: curate", ["curate", *curate_args]),
        ("curate again with nothing new", ["curate", *curate_args]),
    ]
    rows = []
    for step, argv in steps:
        row = run_command(cli + argv, env=dict(os.environ))
        row["step"] = step
        rows.append(row)
        if row["rc"]:
            break
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corpus.bench_lakehouse LAKE DELTA_DIR [-- CURATE ARGS]``: one more night on an
    existing lake (a copy of a ``bench --lakehouse`` lake), printed as the bench's table rows."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m corpus.bench_lakehouse", description=main.__doc__)
    ap.add_argument("lake")
    ap.add_argument("delta_dir")
    ap.add_argument("--workers", type=int, default=2)
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    a = ap.parse_args(args[:cut])
    extra = args[cut + 1 :]  # after --: passed to curate
    rows = run_nightly(a.lake, a.delta_dir, a.workers, extra)
    table = format_table({"n": 0, "workers": a.workers, "rows": rows}).splitlines()
    print("\n".join([f"one more night on {a.lake}, {a.workers} workers", *table[1:]]))
    for r in rows:
        print(f"  {r['step']}: {r['last_line']}")
    return max(r["rc"] for r in rows)


if __name__ == "__main__":
    raise SystemExit(main())
