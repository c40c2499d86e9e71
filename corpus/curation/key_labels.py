"""Labelled key sets, the MIREX key score, and the accuracy of the key estimates on them.

Three sets, each split once into a tuning half and a held-out half (fixed, by id parity, never
by result), with labels that are independent of what the estimators look at:

* ``pop909``: ``../shared/arrangements/NNN/NNN.mid`` with the human key labels annotated from
  the *audio* (``key_audio.txt``); songs whose labels name one key only. Tuning half: even NNN.
* ``pop909_versions``: the earlier arrangements of the same songs (``versions/NNN-vK.mid``), same
  labels, the half of their song; not used for tuning (evaluation only: more pop arrangements,
  not more songs).
* ``goldberg``: the 30 Mutopia files of Bach's Goldberg Variations (``mutopia/ftp/BachJS/BWV988``),
  variation number from the RDF title ("Goldberg Variations - 15"); the label is the published
  key of the work, G major, except variations 15, 21 and 25 in G minor (BWV 988). Tuning half:
  even variation numbers.
* ``chorales``: the Bach chorales of music21's corpus that have a human roman-numeral analysis
  (``bach/choraleAnalyses/riemenschneiderNNN.rntxt``, analyst named in the file); the label is
  the analysis' opening key, the MIDI is music21's conversion of the chorale's score (as
  ``ingest music21`` makes it). Tuning half: even Riemenschneider numbers.

MIREX weighting follows ``mir_eval.key.weighted_score``: 1.0 same key, 0.5 same mode with the
estimate a perfect fifth *above* the label, 0.3 relative major/minor, 0.2 parallel, else 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from corpus.curation.key import KeyEstimate, Mode, estimate_key_from_weights, note_weights, pc_name_to_pc

Half = Literal["tune", "held"]
SETS: Final = ("pop909", "pop909_versions", "goldberg", "chorales")
TUNE_SETS: Final = ("pop909", "goldberg", "chorales")  # the sets whose tuning halves set the weights
GOLDBERG_MINOR: Final = frozenset({15, 21, 25})  # BWV 988: these variations are in G minor


@dataclass(frozen=True, slots=True)
class LabelledPiece:
    set: str
    id: str
    half: Half
    tonic_pc: int
    mode: Mode
    load: Callable[[], bytes]  # the MIDI bytes (music21 conversion is done only when asked)

    @property
    def label(self) -> str:
        return f"{self.tonic_pc}:{self.mode}"


def mirex_score(est_pc: int, est_mode: str, ref_pc: int, ref_mode: str) -> float:
    """MIREX key score of an estimate against a label (see the module docstring)."""
    d = (est_pc - ref_pc) % 12
    if est_mode == ref_mode:
        return 1.0 if d == 0 else 0.5 if d == 7 else 0.0
    if ref_mode == "major" and d == 9:  # estimate is the relative minor
        return 0.3
    if ref_mode == "minor" and d == 3:  # estimate is the relative major
        return 0.3
    return 0.2 if d == 0 else 0.0


def parse_label(text: str) -> tuple[int, Mode]:
    """``'Gb:maj'`` / ``'a:min'`` -> (pitch class, mode); ValueError on anything else."""
    m = re.fullmatch(r"\s*([A-Ga-g][#b]*)\s*:\s*(maj|min|major|minor)\s*", text)
    if not m:
        raise ValueError(f"not a key label: {text!r}; expected Tonic:maj or Tonic:min")
    mode: Mode = "major" if m.group(2).startswith("maj") else "minor"
    return pc_name_to_pc(m.group(1)), mode


def _reader(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()


def pop909_set(arrangements: str | Path, *, versions: bool = False) -> list[LabelledPiece]:
    """Songs with one key in ``key_audio.txt`` (see the module docstring).

    ``versions=True``: instead the earlier arrangements of those songs (``versions/NNN-vK.mid``,
    same melody and key, accompaniment arranged again), as the set ``pop909_versions`` with the
    half of their song.
    """
    out: list[LabelledPiece] = []
    for d in sorted(Path(arrangements).iterdir()):
        lab, mid = d / "key_audio.txt", d / f"{d.name}.mid"
        if not (d.name.isdigit() and lab.is_file() and mid.is_file()):
            continue
        keys = {parse_label(line.split("\t")[-1]) for line in lab.read_text().splitlines() if line.strip()}
        if len(keys) != 1:
            continue
        pc, mode = keys.pop()
        half: Half = "tune" if int(d.name) % 2 == 0 else "held"
        if not versions:
            out.append(LabelledPiece("pop909", d.name, half, pc, mode, _reader(mid)))
            continue
        for v in sorted((d / "versions").glob(f"{d.name}-v*.mid")):
            out.append(LabelledPiece("pop909_versions", v.stem, half, pc, mode, _reader(v)))
    return out


def goldberg_set(data: str | Path) -> list[LabelledPiece]:
    """The Goldberg Variations of ``mutopia/ftp`` (see the module docstring)."""
    out: list[LabelledPiece] = []
    for rdf in sorted((Path(data) / "mutopia" / "ftp" / "BachJS" / "BWV988").rglob("*.rdf")):
        m = re.search(r"<mp:title>\s*Goldberg Variations\s*-\s*(\d+)\s*</mp:title>", rdf.read_text(errors="replace"))
        mid = rdf.with_suffix(".mid")
        if not m or not mid.is_file():
            continue
        n = int(m.group(1))
        mode: Mode = "minor" if n in GOLDBERG_MINOR else "major"
        out.append(LabelledPiece("goldberg", f"var{n:02d}", "tune" if n % 2 == 0 else "held", 7, mode, _reader(mid)))
    return sorted(out, key=lambda p: p.id)


def _chorale_midi(path: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        from music21 import converter
        from music21.midi import translate

        return translate.music21ObjectToMidiFile(converter.parse(path)).writestr()

    return load


def chorale_set() -> list[LabelledPiece]:
    """Bach chorales with a human roman-numeral analysis in music21's corpus."""
    from music21 import corpus

    out: list[LabelledPiece] = []
    for path in sorted(corpus.getPaths(fileExtensions=("rntxt",))):
        p = Path(str(path))
        m = re.fullmatch(r"riemenschneider(\d+)\.rntxt", p.name)
        if not m or p.parent.name != "choraleAnalyses":
            continue
        text = p.read_text(errors="replace")
        bwv = re.search(r"^BWV:\s*(\S+)", text, re.M)
        first = re.search(r"^m[01]\b.*?\s([A-Ga-g][#b-]*):", text, re.M)
        if not bwv or not first:
            continue
        score_file = next(iter(sorted(p.parent.parent.glob(f"bwv{bwv.group(1)}.*"))), None)
        if score_file is None or score_file.suffix not in (".mxl", ".xml", ".krn"):
            continue
        tonic = first.group(1)
        mode: Mode = "major" if tonic[0].isupper() else "minor"
        n = int(m.group(1))
        out.append(
            LabelledPiece(
                "chorales",
                f"riemenschneider{n:03d}",
                "tune" if n % 2 == 0 else "held",
                pc_name_to_pc(tonic[0].upper() + tonic[1:]),
                mode,
                _chorale_midi(score_file),
            )
        )
    return out


def labelled_sets(
    data: str | Path | None, arrangements: str | Path | None, *, chorales: bool = True
) -> list[LabelledPiece]:
    """Every labelled piece that can be built here (a missing folder gives no pieces)."""
    out: list[LabelledPiece] = []
    if arrangements is not None and Path(arrangements).is_dir():
        out += pop909_set(arrangements)
        out += pop909_set(arrangements, versions=True)
    if data is not None and Path(data).is_dir():
        out += goldberg_set(data)
    if chorales:
        out += chorale_set()
    return out


# ---------------------------------------------------------------------------------------------
# estimates and accuracy

METHODS: Final = ("default", "music21", "krumhansl")


@dataclass(slots=True)
class Scored:
    """One labelled piece with its evidence and the estimates of each method."""

    piece: LabelledPiece
    evidence: Any  # key_evidence.KeyEvidence
    estimates: dict[str, KeyEstimate | None]


def score_pieces(pieces: Iterable[LabelledPiece], skipped: list[tuple[str, str]] | None = None) -> list[Scored]:
    """Parse each piece once; the default, music21-compatible (ours) and Krumhansl estimates.

    A piece that cannot be loaded (music21 refuses a few chorales' repeats) is left out and, when
    ``skipped`` is given, appended to it as ``(set/id, reason)``.
    """
    import symusic

    from corpus.curation.key_evidence import key_evidence, key_from_evidence

    out: list[Scored] = []
    for piece in pieces:
        try:
            score = symusic.Score.from_midi(piece.load())
        except Exception as exc:  # noqa: BLE001 - recorded with its reason, the piece is left out
            if skipped is not None:
                skipped.append((f"{piece.set}/{piece.id}", f"{type(exc).__name__}: {exc}"))
            continue
        p, _, w = note_weights(score)
        ev = key_evidence(score, weights_cache=(p, w))
        out.append(
            Scored(
                piece,
                ev,
                {
                    "default": key_from_evidence(ev) if ev is not None else None,
                    "music21": estimate_key_from_weights(p, w, "aarden"),
                    "krumhansl": estimate_key_from_weights(p, w, "krumhansl"),
                },
            )
        )
    return out


def accuracy(scored: Sequence[Scored], method: str) -> dict[str, Any]:
    """``n``, ``exact`` and ``mirex`` (means) of ``method`` over ``scored`` (no key scores 0)."""
    if not scored:
        return {"n": 0, "exact": None, "mirex": None}
    ex, mx = [], []
    for s in scored:
        est = s.estimates.get(method)
        if est is None:
            ex.append(0.0)
            mx.append(0.0)
            continue
        ex.append(float((est.tonic_pc, est.mode) == (s.piece.tonic_pc, s.piece.mode)))
        mx.append(mirex_score(est.tonic_pc, est.mode, s.piece.tonic_pc, s.piece.mode))
    return {"n": len(scored), "exact": float(np.mean(ex)), "mirex": float(np.mean(mx))}


def accuracy_table(scored: Sequence[Scored], methods: Sequence[str] = METHODS) -> list[dict[str, Any]]:
    """One row per (set, half) and per set (half ``all``): n, then exact and mirex per method."""
    rows: list[dict[str, Any]] = []
    for name in sorted({s.piece.set for s in scored}):
        for half in ("tune", "held", "all"):
            part = [s for s in scored if s.piece.set == name and (half == "all" or s.piece.half == half)]
            row: dict[str, Any] = {"set": name, "half": half, "n": len(part)}
            for m in methods:
                acc = accuracy(part, m)
                row[f"{m}_exact"] = acc["exact"]
                row[f"{m}_mirex"] = acc["mirex"]
            rows.append(row)
    return rows


TUNE_GRID: Final[dict[str, tuple[float, ...]]] = {
    "bass": (0.0, 0.05, 0.1, 0.2),
    "final_bass": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    "final_chord": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    "first_bass": (0.0, 0.05, 0.1),
    "declared": (0.0, 0.1, 0.3),
    "sections": (0.0, 0.1, 0.2, 0.3),
}


def _mirex_table() -> np.ndarray:
    modes = ("major", "minor")
    return np.array(
        [[mirex_score(e % 12, modes[e // 12], r % 12, modes[r // 12]) for r in range(24)] for e in range(24)]
    )


def tune_weights(scored: Sequence[Scored], grid: dict[str, tuple[float, ...]] = TUNE_GRID) -> tuple[Any, float]:
    """The evidence weights chosen on the *tuning* halves only (how ``DEFAULT_WEIGHTS`` was set).

    Every combination of ``grid`` (``hist`` stays 1) is scored by the mean over sets of the MIREX
    score on the tuning halves (each set counts equally, whatever its size). Many combinations
    tie at the best value; the weights returned are the centroid of the tied ones, rounded to
    0.05 (the middle of the plateau, not an edge picked by chance). Returns (weights, value).
    """
    import itertools

    from corpus.curation.key_evidence import EVIDENCE, KeyWeights

    tune = [s for s in scored if s.piece.half == "tune" and s.evidence is not None and s.piece.set in TUNE_SETS]
    sets = sorted({s.piece.set for s in tune})
    table = _mirex_table()
    mats, refs = {}, {}
    for n in sets:
        part = [s for s in tune if s.piece.set == n]
        mats[n] = np.stack([s.evidence.matrix for s in part])
        refs[n] = np.array([s.piece.tonic_pc + 12 * (s.piece.mode == "minor") for s in part])
    names = EVIDENCE[1:]
    combos = np.array([(1.0, *c) for c in itertools.product(*(grid[n] for n in names))])
    values = np.zeros(len(combos))
    for n in sets:
        best = np.einsum("ce,nek->cnk", combos, mats[n]).argmax(axis=2)  # (combos, pieces)
        values += table[best, refs[n][None, :]].mean(axis=1)
    values /= len(sets)
    tied = combos[values >= values.max() - 1e-12]
    centre = np.round(tied.mean(axis=0) / 0.05) * 0.05
    w = KeyWeights(**{n: float(round(v, 2)) for n, v in zip(EVIDENCE, centre)})
    return w, float(values.max())
