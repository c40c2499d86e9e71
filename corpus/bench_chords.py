"""Benchmark of chord labels (:mod:`corpus.curation.chords`) against people and against music21.

**Human labels.** The POP909 songs beside the shared data (``../shared/arrangements/NNN``) carry
chord labels by people (``chord_midi.txt``: start and end in seconds, Harte-style labels such as
``B:maj``, ``F#:maj7/5``, ``N``) and beat times (``beat_midi.txt``). Each annotated beat is
compared at its midpoint (the reference chord sounding there vs ours, from ``NNN.mid`` analysed as
curate does: our own beat grid, in seconds through the tempo map). Figures per beat:

* ``root``: the roots agree, over beats whose reference is a chord (a reference ``N`` is left out;
  our ``N`` there is a miss);
* ``majmin`` (MIREX ``majmin``, as ``mir_eval.chord.majmin``): both labels reduced to maj / min /
  N (maj, 7, maj7, maj6 -> maj; min, min7, min6, minmaj7 -> min); beats whose reference does not
  reduce (sus2, sus4, dim, aug, hdim7, dim7) are left out; ours counts only when it reduces to
  the same root and class (our sus4 against a reference maj is a miss);
* ``vocab``: root and quality in our vocabulary (maj6 -> maj, min6 / minmaj7 -> min, sus4(b7)
  -> sus4; the few others kept), N = N, over all beats.

The parameters were chosen on the odd-numbered songs; the even-numbered songs are reported
separately (``held_out``), and they are the figure to quote.

**music21.** On a few notation-made classical files of the shared data, music21's ``chordify``
(every vertical slice as a chord, named by ``root()`` and ``quality``) is sampled at the start
of each of our beats (quarter offsets) and compared with ours: root agreement, and root + triad
class (major / minor / diminished / augmented; ours: maj7, 7 -> major, min7 -> minor, hdim7,
dim7 -> diminished, sus -> other) on the beats where music21's slice has three or more pitch
classes and a triad class. Two groups: the first Bach chorales of music21's corpus (four voices,
written to MIDI first, so both read the same file) and the first Goldberg variations of the shared
Mutopia files (two voices: music21's slice at the beat is mostly a dyad, whose root is a guess,
while ours weighs the whole beat; low agreement there is expected and reported as it is).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Echo = Callable[[str], None]
ROOTS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
MAJ_LIKE = {"maj", "7", "maj7", "maj6", "9", "maj9", "13", "11"}
MIN_LIKE = {"min", "min7", "min6", "minmaj7", "min9", "min11"}
TO_VOCAB = {
    "maj6": "maj",
    "min6": "min",
    "minmaj7": "min",
    "sus4(b7)": "sus4",
    "9": "7",
    "maj9": "maj7",
    "min9": "min7",
}
OURS_MAJMIN = {"maj": "maj", "7": "maj", "maj7": "maj", "min": "min", "min7": "min"}
M21_CLASS = {"maj": "major", "7": "major", "maj7": "major", "min": "minor", "min7": "minor"}
M21_CLASS.update({"dim": "diminished", "dim7": "diminished", "hdim7": "diminished", "aug": "augmented"})
TRIAD_CLASSES = ("major", "minor", "diminished", "augmented")
N_FILES = 6  # files per music21 group (music21 takes about a second per file)
SONG_RE = re.compile(r"^\d{3}$")


def pc_of(name: str) -> int:
    """``C`` -> 0, ``Bb`` -> 10, ``F#`` -> 6."""
    pc = ROOTS[name[0].upper()]
    for ch in name[1:]:
        pc += {"#": 1, "b": -1}.get(ch, 0)
    return pc % 12


def parse_label(lab: str) -> tuple[int | None, str]:
    """A Harte-style label -> (root pc, quality without bass); ``N`` / ``X`` -> (None, "N")."""
    lab = lab.strip()
    if lab in ("N", "X", ""):
        return None, "N"
    root, _, rest = lab.partition(":")
    q = (rest or "maj").split("/")[0]
    return pc_of(root), q


def read_chords(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[int | None, str]]]:
    starts, ends, labs = [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            starts.append(float(parts[0]))
            ends.append(float(parts[1]))
            labs.append(parse_label(parts[2]))
    return np.array(starts), np.array(ends), labs


def read_beats(path: Path) -> np.ndarray:
    return np.array([float(line.split()[0]) for line in path.read_text().splitlines() if line.strip()])


def _at(starts: np.ndarray, ends: np.ndarray, labs: Sequence[tuple[int | None, str]], t: np.ndarray) -> list:
    i = np.searchsorted(starts, t, "right") - 1
    return [labs[k] if k >= 0 and t_ < ends[k] else (None, "N") for k, t_ in zip(i.tolist(), t.tolist())]


def song_beats(song_dir: Path, params: Any = None) -> list[tuple[tuple[int | None, str], tuple[int | None, str]]]:
    """(reference, ours) per annotated beat of one POP909 song."""
    import symusic

    from corpus.curation import chords

    p = params or chords.Params()
    score = symusic.Score(str(song_dir / f"{song_dir.name}.mid"))
    start, end, pitch = chords.pitched_notes(score)
    bounds = chords.beat_bounds(score, start)
    segs = chords.chords_from_notes(start, end, pitch, bounds, p)
    secs = chords.tick_seconds(score, np.array([[s.start, s.end] for s in segs]).reshape(-1))
    ours = [(s.root_pc, s.quality) for s in segs]
    beats = read_beats(song_dir / "beat_midi.txt")
    mid = (beats[:-1] + beats[1:]) / 2
    rs, re_, rl = read_chords(song_dir / "chord_midi.txt")
    return list(zip(_at(rs, re_, rl, mid), _at(secs[0::2], secs[1::2], ours, mid), strict=True))


def _majmin(q: str) -> str | None:
    if q == "N":
        return "N"
    return "maj" if q in MAJ_LIKE else "min" if q in MIN_LIKE else None


def score_beats(pairs: Sequence[tuple[tuple[int | None, str], tuple[int | None, str]]]) -> dict[str, Any]:
    """Counts and accuracies (root, majmin, vocab) of (reference, ours) beat pairs."""
    root_n = root_ok = mm_n = mm_ok = voc_ok = 0
    for (rr, rq), (er, eq) in pairs:
        if rr is not None:
            root_n += 1
            root_ok += er == rr
        rc = _majmin(rq)
        if rc is not None:
            mm_n += 1
            ec = "N" if eq == "N" else OURS_MAJMIN.get(eq)
            mm_ok += ec == rc and (rc == "N" or er == rr)
        voc_ok += (er, eq) == (rr, TO_VOCAB.get(rq, rq))
    n = len(pairs)
    return {
        "beats": n,
        "root_beats": root_n,
        "majmin_beats": mm_n,
        "root": round(root_ok / root_n, 4) if root_n else None,
        "majmin": round(mm_ok / mm_n, 4) if mm_n else None,
        "vocab": round(voc_ok / n, 4) if n else None,
    }


def pop909_songs(arrangements_dir: Path) -> list[Path]:
    return sorted(
        d
        for d in Path(arrangements_dir).iterdir()
        if SONG_RE.match(d.name) and (d / "chord_midi.txt").is_file() and (d / f"{d.name}.mid").is_file()
    )


def run_human(arrangements_dir: Path, params: Any = None) -> dict[str, Any]:
    """Per-beat accuracy on the odd (tuning) and even (held-out) POP909 songs."""
    t0 = time.perf_counter()
    halves: dict[str, list] = {"tuning_odd": [], "held_out_even": []}
    per_song = {}
    for d in pop909_songs(arrangements_dir):
        pairs = song_beats(d, params)
        halves["tuning_odd" if int(d.name) % 2 else "held_out_even"].extend(pairs)
        per_song[d.name] = score_beats(pairs)["majmin"]
    out: dict[str, Any] = {k: {"songs": 0, **score_beats(v)} for k, v in halves.items()}
    for d in per_song:
        out["tuning_odd" if int(d) % 2 else "held_out_even"]["songs"] += 1
    out["worst_songs"] = sorted((v, k) for k, v in per_song.items() if v is not None)[:5]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------ music21
def m21_beats(path: Path) -> list[tuple[tuple[int | None, str], tuple[int | None, str]]]:
    """(music21 chordify, ours) per beat of one file: roots and triad classes."""
    import music21
    import symusic

    from corpus.curation import chords

    score = symusic.Score(str(path))
    start, end, pitch = chords.pitched_notes(score)
    bounds = chords.beat_bounds(score, start)
    segs = chords.chords_from_notes(start, end, pitch, bounds)
    ch = music21.converter.parse(str(path)).chordify().flatten().getElementsByClass("Chord")
    offs = np.array([float(c.offset) for c in ch])
    ends = offs + np.array([float(c.quarterLength) for c in ch])
    out = []
    for s in segs:
        for b in range(s.start_beat, s.start_beat + s.n_beats):
            q = bounds[b] / score.tpq
            k = int(np.searchsorted(offs, q + 1e-6, "right")) - 1
            if k < 0 or q >= ends[k] or not ch[k].pitches:
                continue
            c = ch[k]
            mq = c.quality if len(set(c.pitchClasses)) >= 3 else "incomplete"  # a dyad or a unison
            ours = (s.root_pc, M21_CLASS.get(s.quality, "other") if s.quality != "N" else "N")
            out.append(((c.root().pitchClass, mq), ours))
    return out


def run_music21(files: Sequence[Path]) -> dict[str, Any]:
    """Agreement of ours with music21's chordify on ``files`` (see the module docstring)."""
    t0 = time.perf_counter()
    per_file = {}
    root_n = root_ok = tri_n = tri_ok = 0
    for f in files:
        pairs = m21_beats(f)
        fr = sum(1 for (mr, _), (er, _) in pairs if mr == er)
        tri = [(m, e) for m, e in pairs if m[1] in TRIAD_CLASSES]
        ft = sum(1 for m, e in tri if m == e)
        per_file[f.name] = {"beats": len(pairs), "root": round(fr / len(pairs), 4) if pairs else None}
        root_n += len(pairs)
        root_ok += fr
        tri_n += len(tri)
        tri_ok += ft
    return {
        "files": len(per_file),
        "beats": root_n,
        "root_agreement": round(root_ok / root_n, 4) if root_n else None,
        "triad_beats": tri_n,
        "root_quality_agreement": round(tri_ok / tri_n, 4) if tri_n else None,
        "per_file": per_file,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def goldberg_files(data_dir: Path, n: int = N_FILES) -> list[Path]:
    """The first ``n`` Goldberg variations of the shared Mutopia files (two-voice counterpoint)."""
    return sorted((Path(data_dir) / "mutopia").rglob("bwv-988-v*.mid"))[:n]


def chorale_files(out_dir: Path, n: int = N_FILES) -> list[Path]:
    """The first ``n`` Bach chorales of music21's corpus (four voices), written as MIDI to ``out_dir``."""
    import music21

    out = []
    for p in sorted(music21.corpus.getComposer("bach"), key=str)[:n]:
        dst = Path(out_dir) / (Path(p).stem + ".mid")
        music21.converter.parse(p).write("midi", fp=str(dst))
        out.append(dst)
    return out


def run_chords(arrangements_dir: Path, data_dir: Path | None, echo: Echo = print) -> dict[str, Any]:
    """Both comparisons; prints :func:`format_chords`."""
    import tempfile

    res: dict[str, Any] = {"human": run_human(arrangements_dir), "music21": {}}
    with tempfile.TemporaryDirectory(prefix="midicorpus-chorales-") as tmp:
        res["music21"]["bach_chorales"] = run_music21(chorale_files(Path(tmp)))
    gold = goldberg_files(data_dir) if data_dir is not None else []
    if gold:
        res["music21"]["goldberg"] = run_music21(gold)
    echo(format_chords(res))
    return res


def format_chords(r: dict[str, Any]) -> str:
    h = r["human"]
    lines = ["chord labels vs POP909 human labels (per beat; parameters set on the odd songs)"]
    for k in ("tuning_odd", "held_out_even"):
        v = h[k]
        lines.append(
            f"  {k:<14} {v['songs']:>3} songs {v['beats']:>6} beats: root {v['root']:.3f}, "
            f"root+quality majmin {v['majmin']:.3f}, vocab {v['vocab']:.3f}"
        )
    for name, m in (r.get("music21") or {}).items():
        lines.append(
            f"chord labels vs music21 chordify, {name} ({m['files']} files, {m['beats']} beats): "
            f"root {m['root_agreement']:.3f}, root+triad class {m['root_quality_agreement']:.3f} "
            f"on {m['triad_beats']} beats where music21's slice is a triad"
        )
    return "\n".join(lines)
