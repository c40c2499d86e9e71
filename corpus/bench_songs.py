"""Benchmark of song identity: grouped share, false merges, leakage, and the cost of a delta.

``midicorpus bench`` runs :func:`run_songs` on the POP909 arrangements beside the shared data
(every song as 2-8 arrangements, ``../shared/arrangements``) together with the other real files
(folk tunes, the Goldberg variations, pop songs, classical piano, Lakh), and prints:

* the share of songs whose arrangements all land in one song group, per half of the songs
  (the rule was set on all 150 songs: no half is unseen; songs nobody here has seen are the
  figure that counts);
* groups mixing two POP909 songs (and whether their melody tracks are the same: POP909 holds
  some songs twice), Goldberg variations and folk tunes merged;
* leakage: songs with arrangements in two splits when splits are assigned per song group, and,
  for comparison, per dedup cluster + MSD / Mutopia id (the policy before song groups), over
  ten seeds at 0.8 / 0.1 / 0.1.

With ``--scale``, :func:`run_delta` measures the cost of a nightly delta: a synthetic lake of N
pieces (``corpus.synth``), then 200 new pieces, curated; and a curate with nothing new.
"""

from __future__ import annotations

import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Echo = Callable[[str], None]
SONG_RE = re.compile(r"(\d{3})/(?:versions/)?\d{3}(?:-v\d+)?\.mid$")
LEAK_SEEDS = range(10)
LEAK_FRACTIONS = (0.8, 0.1, 0.1)


def _q(lake: Any, sql: str) -> list[tuple[Any, ...]]:
    con = lake.connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _leaks(unit_of: dict[str, str], song_of: dict[str, str]) -> list[int]:
    """Songs with pieces in two splits, per seed, when ``unit_of`` decides the split unit."""
    from corpus.snapshot import assign_splits

    out = []
    for seed in LEAK_SEEDS:
        split = assign_splits(unit_of, seed, LEAK_FRACTIONS, {})
        seen: dict[str, set[str]] = {}
        for p, s in song_of.items():
            seen.setdefault(s, set()).add(split[p])
        out.append(sum(1 for v in seen.values() if len(v) > 1))
    return out


def run_songs(arrangements_dir: Path, data_dir: Path | None, workers: int = 2, echo: Echo = print) -> dict[str, Any]:
    """Ingest the arrangements (and ``data_dir``), curate, and measure song identity (see the module docstring)."""
    from corpus.curate import curate
    from corpus.engine import Engine
    from corpus.ingest import ingest
    from corpus.lake import Lake
    from corpus.snapshot import song_groups
    from corpus.sources.folder import DirSource

    tmp = Path(tempfile.mkdtemp(prefix="midicorpus-bench-songs-"))
    try:
        lake = Lake(tmp / "lake")
        with lake.lock("bench"), Engine(workers=workers) as e:
            ingest(lake, DirSource(arrangements_dir, name="pop909"), e, command="bench ingest")
            if data_dir is not None:
                ingest(lake, DirSource(data_dir, name="data"), e, command="bench ingest")
            c = curate(lake, e)
        echo(f"  curate: {c.line()} in {c.seconds:.1f} s")
        rows = _q(
            lake,
            "SELECT DISTINCT p.piece_id, p.source_uri, f.song_group, f.dedup_cluster FROM features f "
            "JOIN pieces p USING (piece_id) WHERE p.source = 'pop909' AND p.status = 'ok'",
        )
        song_of: dict[str, str] = {}
        group_of: dict[str, str] = {}
        cluster_of: dict[str, str] = {}
        for pid, uri, g, cl in rows:
            m = SONG_RE.search(uri)
            if m:
                song_of[pid], group_of[pid], cluster_of[pid] = m.group(1), g, cl
        songs: dict[str, set[str]] = {}
        groups: dict[str, set[str]] = {}
        for p, s in song_of.items():
            songs.setdefault(s, set()).add(group_of[p])
            groups.setdefault(group_of[p], set()).add(s)
        whole = {s for s, g in songs.items() if len(g) == 1}
        halves = {}
        for name, pick in (("first_half", lambda s: int(s) <= 75), ("second_half", lambda s: int(s) > 75)):
            sel = [s for s in songs if pick(s)]
            halves[name] = {
                "songs": len(sel),
                "whole": sum(1 for s in sel if s in whole),
                "share": round(sum(1 for s in sel if s in whole) / max(1, len(sel)), 4),
            }
        mixed = sorted(sorted(s) for s in groups.values() if len(s) > 1)
        # do the mixed songs share their melody track (the same song under two POP909 ids)?
        same_melody = []
        for ss in mixed:
            ids = [p for p, s in song_of.items() if s in ss]
            got = _q(
                lake,
                "SELECT max(containment) FROM song_pairs_t WHERE piece_a IN ({0}) AND piece_b IN ({0})".format(
                    ", ".join(f"'{p}'" for p in ids)
                ),
            )[0][0]
            same_melody.append({"songs": ss, "best_containment_across": got})
        gold = _q(
            lake,
            "SELECT count(DISTINCT regexp_extract(p.source_uri, 'bwv-988-v(\\d+)', 1)), count(DISTINCT f.song_group) "
            "FROM features f JOIN pieces p USING (piece_id) WHERE p.source_uri LIKE '%bwv-988-v%.mid'",
        )[0]
        folk = _q(
            lake,
            "SELECT count(DISTINCT p.source_uri), count(DISTINCT f.song_group) FROM features f "
            "JOIN pieces p USING (piece_id) WHERE p.source_uri LIKE '%Nottingham%'",
        )[0]
        # leakage: split units per song group (now) and per dedup cluster (before song groups)
        now = song_groups({p: [f"song:{group_of[p]}", f"cluster:{cluster_of[p]}"] for p in song_of})
        before = song_groups({p: [f"cluster:{cluster_of[p]}"] for p in song_of})
        leak_now, leak_before = _leaks(now, song_of), _leaks(before, song_of)
        dedup_whole = sum(1 for s in songs if len({cluster_of[p] for p, x in song_of.items() if x == s}) == 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "songs": len(songs),
        "pieces": len(song_of),
        "songs_whole_share": round(len(whole) / max(1, len(songs)), 4),
        "songs_whole_in_one_dedup_cluster_share": round(dedup_whole / max(1, len(songs)), 4),
        "halves": halves,
        "groups_mixing_songs": len(mixed),
        "groups_mixing_songs_detail": same_melody,
        "goldberg_variations_groups": {"variations": gold[0], "groups": gold[1]},
        "folk_tunes_groups": {"tunes": folk[0], "groups": folk[1]},
        "leakage_songs_in_two_splits": {
            "per_song_group": leak_now,
            "per_dedup_cluster": leak_before,
            "seeds": list(LEAK_SEEDS),
            "fractions": list(LEAK_FRACTIONS),
        },
        "curate_s": round(c.seconds, 2),
    }
    echo(format_songs(result))
    return result


def format_songs(r: dict[str, Any]) -> str:
    h = r["halves"]
    leak = r["leakage_songs_in_two_splits"]
    mixed = "; ".join(
        f"{'+'.join(x['songs'])} (best track containment {x['best_containment_across']:.2f})"
        for x in r["groups_mixing_songs_detail"]
    )
    return "\n".join(
        [
            f"song identity on {r['songs']} POP909 songs ({r['pieces']} arrangements) among the shared data:",
            f"  songs with every arrangement in one song group: {r['songs_whole_share']:.1%} "
            f"(first half {h['first_half']['whole']}/{h['first_half']['songs']}, second half "
            f"{h['second_half']['whole']}/{h['second_half']['songs']}); in one dedup cluster: "
            f"{r['songs_whole_in_one_dedup_cluster_share']:.1%}",
            f"  groups mixing two POP909 ids: {r['groups_mixing_songs']}" + (f" ({mixed})" if mixed else ""),
            f"  Goldberg variations: {r['goldberg_variations_groups']['variations']} in "
            f"{r['goldberg_variations_groups']['groups']} groups; folk tunes: {r['folk_tunes_groups']['tunes']} in "
            f"{r['folk_tunes_groups']['groups']} groups",
            f"  songs in two splits ({'/'.join(map(str, leak['fractions']))}, seeds 0-{len(leak['seeds']) - 1}): "
            f"per song group {leak['per_song_group']}, per dedup cluster (before) {leak['per_dedup_cluster']}",
        ]
    )


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_delta(
    n: int = 20_000,
    delta: int = 200,
    src_dir: Path | None = None,
    workers: int = 2,
    echo: Echo = print,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Curate time of a nightly delta: ``n`` synthetic pieces curated, then ``delta`` new ones, then nothing new."""
    from corpus.curate import curate
    from corpus.engine import Engine
    from corpus.ingest import ingest
    from corpus.lake import Lake
    from corpus.sources.base import SourceItem
    from corpus.synth import generate

    if src_dir is None:
        src_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="midicorpus-delta-"))
        work_dir = tmp
    try:
        t0 = time.perf_counter()
        paths = generate(src_dir, Path(work_dir) / "synth", n + delta, seed=1)
        echo(f"delta: generated {len(paths)} synthetic files in {time.perf_counter() - t0:.1f} s")
        files_dir = Path(work_dir) / "synth"

        def items(sel: list[Path]) -> Any:
            for p in sel:
                yield SourceItem(
                    source="synthetic", uri=str(p.relative_to(files_dir)), data=p.read_bytes(), name=p.name
                )

        lake = Lake(Path(work_dir) / "lake")
        with lake.lock("bench"), Engine(workers=workers) as e:
            ingest(lake, items(paths[:n]), e, command="bench ingest")
            base = curate(lake, e)
            echo(f"  curate of {n}: {base.line()} in {base.seconds:.1f} s")
            ingest(lake, items(paths[n:]), e, command="bench ingest")
            d = curate(lake, e)
            echo(f"  curate of the {delta}-piece delta: {d.line()} in {d.seconds:.1f} s")
            noop = curate(lake, e)
            echo(f"  curate with nothing new: {noop.seconds:.1f} s")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "n": n,
        "delta": delta,
        "curate_full_s": round(base.seconds, 2),
        "curate_delta_s": round(d.seconds, 2),
        "curate_noop_s": round(noop.seconds, 2),
        "delta_analysed": d.analysed,
        "song_groups": d.song_groups,
        "driver_peak_rss_mb": _rss_mb(),
    }
