"""Synthetic corpora for scale tests: many distinct, realistic MIDI files made from real ones.

A synthetic piece is built from the bars of real fixtures: a *base* piece gives the
instrumentation, tempo, time signature and length (in bars); its sections are re-ordered
and repeated, mixed with sections of other fixtures, transposed (the whole piece, and now
and then one section: a modulation), with a few melody notes moved by a step and the
velocities and tempo varied. Drums are never transposed. So every file is a valid SMF with
the note count, track layout and density of real music, and the content hashes differ
(``corpus.curation.dedup.content_hash``), so neither byte-level nor note-level dedup
collapses a synthetic corpus of any size.

Deterministic: file ``i`` of seed ``s`` depends only on ``(s, i)`` and the fixtures (the
sorted ``.mid/.midi/.kar/.rmi`` files under ``src_dir`` that :func:`corpus.parse.analyse`
accepts), not on how many files are asked for. A few hundred files per second on one core.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")
TPQ = 480  # every fixture is resampled to this resolution, so sections join on one grid
MIN_NOTES = 32  # fixtures with fewer notes are not used (too little to recombine)
MIN_BARS, MAX_BARS = 8, 160  # length of a synthetic piece, in bars
MAX_TRACKS = 16
SECTION_BARS = (2, 4, 4, 8, 8, 8)  # lengths of a section, drawn uniformly from this list
FOREIGN_SHARE = 0.35  # chance that a section comes from another fixture than the base
MODULATION_SHARE = 0.15  # chance that a section gets its own extra transposition
NOTE_EDIT_SHARE = 0.06  # share of pitched notes moved by one or two semitones
MAX_TRIES = 8  # attempts per file before a content-hash collision is an error


@dataclass(frozen=True)
class _Track:
    name: str
    program: int
    is_drum: bool
    time: np.ndarray  # int64, sorted by onset
    duration: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray


@dataclass(frozen=True)
class Fixture:
    """A real piece, resampled to :data:`TPQ`, as arrays (cheap to slice by bars)."""

    path: str  # relative to the source folder
    tracks: tuple[_Track, ...]
    bars: np.ndarray  # tick of every bar line, plus the end
    qpm: float
    time_signature: tuple[int, int]
    n_notes: int

    @property
    def n_bars(self) -> int:
        return len(self.bars) - 1


def midi_paths(src_dir: str | os.PathLike[str]) -> list[Path]:
    root = Path(src_dir)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)


def load_fixtures(src_dir: str | os.PathLike[str]) -> list[Fixture]:
    """The usable real pieces under ``src_dir``; the rejected or tiny ones are skipped."""
    import symusic

    from corpus.curation.key import bar_starts
    from corpus.parse import Reject, analyse, check_structure

    root = Path(src_dir)
    if not root.is_dir():
        raise ValueError(f"fixture folder {str(root)!r} does not exist; pass a folder of MIDI files")
    out: list[Fixture] = []
    seen: set[bytes] = set()
    for path in midi_paths(root):
        data = path.read_bytes()
        key = data[:64] + len(data).to_bytes(8, "little")
        if key in seen:  # the same file in two places (mutopia mirror)
            continue
        seen.add(key)
        try:
            analyse(data)
            smf, _ = check_structure(data)
        except Reject:
            continue
        score = symusic.Score.from_midi(smf)
        if score.tpq != TPQ:
            score = score.resample(TPQ, min_dur=1)
        tracks = []
        for tr in score.tracks:
            a = tr.notes.numpy()
            if not len(a["time"]):
                continue
            order = np.argsort(a["time"], kind="stable")
            tracks.append(
                _Track(
                    name=tr.name,
                    program=int(tr.program),
                    is_drum=bool(tr.is_drum),
                    time=a["time"][order].astype(np.int64),
                    duration=a["duration"][order].astype(np.int64),
                    pitch=a["pitch"][order].astype(np.int64),
                    velocity=a["velocity"][order].astype(np.int64),
                )
            )
        n_notes = sum(len(t.time) for t in tracks)
        if n_notes < MIN_NOTES:
            continue
        end = int(score.end())
        bars = bar_starts(score, end)
        bars = np.append(bars[bars < end], end).astype(np.int64)
        if len(bars) < 3:
            continue
        tempos = score.tempos.numpy()
        qpm = float(6e7 / tempos["mspq"][0]) if len(tempos["mspq"]) else 120.0
        ts = score.time_signatures
        sig = (int(ts[0].numerator), int(ts[0].denominator)) if len(ts) else (4, 4)
        if sig[0] <= 0 or sig[1] <= 0:
            sig = (4, 4)
        out.append(Fixture(str(path.relative_to(root)), tuple(tracks[:MAX_TRACKS]), bars, qpm, sig, n_notes))
    if not out:
        raise ValueError(f"no usable MIDI fixture (>= {MIN_NOTES} notes, parses) under {str(root)!r}")
    return out


def _sections(rng: np.random.Generator, fixtures: list[Fixture], base: int) -> list[tuple[int, int, int, int]]:
    """(fixture, first bar, last bar exclusive, extra transposition) of each section."""
    fb = fixtures[base]
    target = int(np.clip(round(fb.n_bars * rng.uniform(0.6, 1.4)), MIN_BARS, MAX_BARS))
    out: list[tuple[int, int, int, int]] = []
    total = 0
    while total < target:
        src = base if (len(fixtures) == 1 or rng.random() >= FOREIGN_SHARE) else int(rng.integers(len(fixtures)))
        fx = fixtures[src]
        k = min(int(rng.choice(SECTION_BARS)), fx.n_bars, target - total)
        start = int(rng.integers(0, fx.n_bars - k + 1))
        shift = int(rng.choice((-5, -2, 2, 5, 7))) if rng.random() < MODULATION_SHARE else 0
        out.append((src, start, start + k, shift))
        total += k
    return out


def _render(rng: np.random.Generator, fixtures: list[Fixture], base: int) -> Any:
    """One synthetic score (symusic, :data:`TPQ`)."""
    import symusic

    fb = fixtures[base]
    transpose = int(rng.integers(-6, 7))
    slots: dict[tuple[bool, int], int] = {}  # (is_drum, program) -> output track
    cols: list[dict[str, list[np.ndarray]]] = []
    meta: list[tuple[str, int, bool]] = []

    def slot(tr: _Track) -> int | None:
        k = (tr.is_drum, tr.program)
        if k not in slots:
            if len(slots) >= MAX_TRACKS:
                return None
            slots[k] = len(cols)
            cols.append({"time": [], "duration": [], "pitch": [], "velocity": []})
            meta.append((tr.name, tr.program, tr.is_drum))
        return slots[k]

    for tr in fb.tracks:  # the base's instrumentation first, in its order
        slot(tr)
    offset = 0
    for src, b0, b1, shift in _sections(rng, fixtures, base):
        fx = fixtures[src]
        t0, t1 = int(fx.bars[b0]), int(fx.bars[b1])
        for tr in fx.tracks:
            i0, i1 = np.searchsorted(tr.time, [t0, t1])
            if i1 <= i0:
                continue
            j = slot(tr)
            if j is None:
                continue
            pitch = tr.pitch[i0:i1]
            if not tr.is_drum:
                pitch = pitch + transpose + shift
                edit = rng.random(len(pitch)) < NOTE_EDIT_SHARE
                if edit.any():
                    pitch = pitch + edit * rng.choice((-2, -1, 1, 2), len(pitch))
                pitch = np.where(pitch < 0, pitch % 12, pitch)  # fold back into range by octaves
                pitch = np.where(pitch > 127, 116 + pitch % 12, pitch)
            vel = np.clip(tr.velocity[i0:i1] + rng.integers(-6, 7, i1 - i0), 1, 127)
            c = cols[j]
            c["time"].append(tr.time[i0:i1] - t0 + offset)
            c["duration"].append(np.minimum(tr.duration[i0:i1], max(t1 - t0, 1) * 2))
            c["pitch"].append(pitch)
            c["velocity"].append(vel)
        offset += t1 - t0

    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, qpm=round(fb.qpm * float(rng.uniform(0.85, 1.2)), 3)))
    score.time_signatures.append(symusic.TimeSignature(0, *fb.time_signature))
    for (name, program, is_drum), c in zip(meta, cols):
        if not c["time"]:
            continue
        t = symusic.Track(name, program, is_drum)
        t.notes = symusic.Note.from_numpy(
            np.concatenate(c["time"]).astype(np.int32),
            np.concatenate(c["duration"]).astype(np.int32),
            np.concatenate(c["pitch"]).astype(np.int8),
            np.concatenate(c["velocity"]).astype(np.int8),
        )
        score.tracks.append(t)
    return score


class Generator:
    """Synthetic pieces from the fixtures under ``src_dir`` (loaded once)."""

    def __init__(self, src_dir: str | os.PathLike[str], seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.src_dir = Path(src_dir)
        self.seed = seed
        self.fixtures = load_fixtures(src_dir)
        # bases weighted towards pieces of typical length: a 20-note jingle and a 50,000-note
        # orchestral dump are equally likely as bases in a folder, not in a real corpus
        notes = np.array([f.n_notes for f in self.fixtures], dtype=np.float64)
        w = 1.0 / (1.0 + np.abs(np.log(notes / np.median(notes))))
        self._weights = w / w.sum()

    def piece(self, i: int, attempt: int = 0) -> tuple[bytes, str]:
        """File ``i``: its bytes and its content hash. A pure function of (seed, i, attempt, fixtures)."""
        from corpus.curation.dedup import content_hash

        rng = np.random.default_rng([self.seed, i] if attempt == 0 else [self.seed, i, attempt])
        base = int(rng.choice(len(self.fixtures), p=self._weights))
        score = _render(rng, self.fixtures, base)
        return score.dumps_midi(), content_hash(score)

    def iter_bytes(self, n: int, start: int = 0) -> Iterator[tuple[str, bytes]]:
        """``(name, bytes)`` of files ``start .. start + n - 1``, all with distinct notes.

        A piece whose notes equal an earlier one's (vanishingly rare) is drawn again from
        a derived stream; after :data:`MAX_TRIES` collisions it raises.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        seen: set[str] = set()
        for i in range(start, start + n):
            for attempt in range(MAX_TRIES):
                data, h = self.piece(i, attempt)
                if h not in seen:
                    seen.add(h)
                    break
            else:
                raise RuntimeError(f"synthetic piece {i} (seed {self.seed}) repeats earlier notes {MAX_TRIES} times")
            yield f"synth-{self.seed}-{i:06d}.mid", data

    def source(self, n: int, name: str = "synthetic", start: int = 0) -> Iterator[Any]:
        """The pieces as :class:`corpus.sources.base.SourceItem` (ingest without writing files)."""
        from corpus.sources.base import SourceItem

        for fname, data in self.iter_bytes(n, start):
            yield SourceItem(source=name, uri=fname, data=data, name=fname, license="synthetic (test data)")


def generate(src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` synthetic MIDI files made from the fixtures under ``src_dir`` into ``out_dir``.

    Returns their paths (``synth-<seed>-<i>.mid``, in order). Same seed and fixtures, same
    bytes. Files already there with the same name are overwritten.
    """
    gen = Generator(src_dir, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in gen.iter_bytes(n):
        p = out / name
        p.write_bytes(data)
        paths.append(p)
    return paths
