"""Named tokenizer presets, each a full miditok configuration, in one place.

A preset is data: the miditok class, the ``TokenizerConfig`` arguments that differ from
miditok's defaults (each with its reason; miditok keeps unknown keyword arguments in
``config.additional_params``), and an optional score transform applied before
encoding. ``build(name)`` makes the tokenizer; ``from_json`` loads any saved miditok
tokenizer (``--config FILE``). The tokenizer hash covers the saved miditok JSON (its whole
config, the miditok/symusic versions) and the transform, so changing anything makes a
new hash and a new partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Octuple and MuMIDI embed the bar index; miditok's default limit of 60 bars silently cuts
# longer pieces. 1024 bars covers 99.9 % of Lakh; a longer piece is rejected, never cut.
MAX_BAR_EMBEDDING = 1024


@dataclass(frozen=True)
class Preset:
    name: str
    tokenization: str  # miditok class name
    config: dict[str, Any] = field(default_factory=dict)
    transform: dict[str, Any] | None = None  # see apply_transform
    doc: str = ""
    verify: bool = False  # decode every piece and reject lossy encodings (schemes known to lose notes)
    loses: str = ""  # which pieces the scheme loses by design, and why (README, snapshot card)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("remi", "REMI", doc="miditok defaults (one sequence per track)"),
        Preset("tsd", "TSD", doc="miditok defaults (one sequence per track)"),
        Preset("midilike", "MIDILike", doc="miditok defaults"),
        Preset(
            "structured",
            "Structured",
            doc="miditok defaults; time shifts cap at 12 beats, so longer gaps lose notes: verified",
            verify=True,
            loses="time moves only by a TimeShift before each note, the closest of its values (up to 12 beats; "
            "1/8 beat apart below 4 beats, 1/4 beat from 4 to 12): a track with an onset gap over 12 beats (a late "
            "entry, a long rest) or an off-grid gap of 4-12 beats decodes with every later note moved, and is "
            "rejected as lossy_encoding (the detail names the track and the gap). Melodies and sparse tracks are hit "
            "most: 96 of the 270 shared pieces (85 over the cap, 11 off-grid; 26 of the 37 extracted Lakh melodies).",
        ),
        Preset("cpword", "CPWord", doc="miditok defaults (multi-vocabulary)"),
        Preset(
            "octuple",
            "Octuple",
            {"max_bar_embedding": MAX_BAR_EMBEDDING},
            doc="defaults, bar limit raised from 60 (longer pieces were cut silently); verified",
            verify=True,
            loses="a time signature travels only in note rows, so a track with no note in the bar where a time "
            "signature starts decodes its later bars at the old length; and miditok 3.1's decoder places the first "
            "note after a change of denominator (4/4 to 6/8) with the old position unit. Both are rejected as "
            "lossy_encoding with the track and the change in the detail; a piece over 1024 bars is too_many_bars. "
            "Only pieces with time-signature changes are hit: 20 of the 270 shared pieces (10 each) plus 1 too long.",
        ),
        Preset(
            "mumidi",
            "MuMIDI",
            {"max_bar_embedding": MAX_BAR_EMBEDDING},
            doc="defaults, bar limit raised from 60",
        ),
        Preset(
            "mmm",
            "MMM",
            {"base_tokenizer": "REMI"},
            doc="MMM needs a base tokenizer: REMI",
        ),
        Preset(
            "pertok",
            "PerTok",
            {
                "use_programs": True,
                # PerTok's own default; miditok 3.1 fails on time signatures outside the
                # range (2/2, 9/8...) unless with_workarounds drops them (see there)
                "use_time_signatures": True,
                "beat_res": {(0, 4): 4, (4, 8): 2},
                "ticks_per_quarter": 480,
                "use_microtiming": True,
                "max_microtiming_shift": 0.125,
                "num_microtiming_bins": 30,
            },
            doc="PerTok needs ticks_per_quarter and its microtiming settings; verified",
            verify=True,
        ),
        Preset(
            "remi_multitrack",
            "REMI",
            {
                "use_programs": True,
                "one_token_stream_for_programs": True,
                "use_tempos": True,
                "use_time_signatures": True,
            },
            doc="one stream for all tracks, Program tokens, tempos and time signatures",
        ),
        Preset(
            "tsd_multitrack",
            "TSD",
            {
                "use_programs": True,
                "one_token_stream_for_programs": True,
                "use_tempos": True,
                "use_time_signatures": True,
            },
            doc="one stream for all tracks, Program tokens, tempos and time signatures",
        ),
        Preset(
            "performance",
            "MIDILike",
            {
                # Oore et al. 2018, "This Time with Feeling": 128 note-on, 128 note-off,
                # 100 time shifts of 10 ms, 32 velocity bins, sustain pedal events.
                "beat_res": {(0, 2): 50},  # at the fixed 120 bpm / 50 tpq below: 100 shifts of 10 ms
                "num_velocities": 32,
                "use_sustain_pedals": True,
                "use_time_signatures": False,
                "pitch_range": (0, 127),
            },
            transform={"fixed_tempo_bpm": 120.0, "tpq": 50, "merge_to_piano": True},
            doc="performance encoding: note-on/off, 10 ms shifts (absolute time), 32 velocities, pedal; "
            "pitched tracks merged into one piano part as in the paper (drums dropped)",
        ),
        Preset(
            "note_duration",
            "TSD",
            {"use_velocities": False, "beat_res": {(0, 4): 4, (4, 12): 1}, "use_time_signatures": False},
            doc="note/duration pairs on a 16th grid, like MusicAutobot's encoding",
        ),
    ]
}

DEFAULT_SCHEMES = ("remi",)


class PresetError(ValueError):
    pass


def names() -> list[str]:
    return list(PRESETS)


def _config(preset: Preset) -> Any:
    from miditok import TokenizerConfig

    return TokenizerConfig(**preset.config)


def build(name: str) -> tuple[Any, dict[str, Any] | None]:
    """(tokenizer, transform) for a preset name."""
    import miditok

    if name not in PRESETS:
        raise PresetError(f"unknown scheme {name!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[name]
    return with_workarounds(getattr(miditok, p.tokenization)(_config(p))), p.transform


def with_workarounds(tok: Any) -> Any:
    """The tokenizer with our fixes for known miditok bugs (every constructor here calls it).

    PerTok with ``use_time_signatures`` (miditok 3.1.0): ``PerTok._resample_score`` ignores the
    time-signature list that ``preprocess_score`` filtered, so a time signature outside
    ``time_signature_range`` (2/2, 9/8, 7/8... in 20 of the 270 shared pieces) reaches the
    vocabulary lookup and encoding fails with ``KeyError: 'TimeSig_2/2'``; every other
    tokenizer drops it. The fix drops those time signatures after PerTok's resampling, as the
    base class does; pieces without one get the same ids as before. Reproduction::

        tok = miditok.PerTok(miditok.TokenizerConfig(use_time_signatures=True,
            ticks_per_quarter=480, use_microtiming=False, max_microtiming_shift=0.125))
        s = symusic.Score(480); s.time_signatures.append(symusic.TimeSignature(0, 2, 2))
        s.tracks.append(symusic.Track()); s.tracks[0].notes.append(symusic.Note(0, 480, 60, 64))
        tok.encode(s)  # KeyError: 'TimeSig_2/2' (REMI with the same config drops the 2/2)

    MuMIDI without ``use_tempos`` (its default; miditok 3.1.0): ``MuMIDI._score_to_tokens``
    reads ``score.tempos[0]`` whatever the config, and preprocessing adds a default tempo
    only when tempos are used, so a file without a tempo event (29 of the 270 shared pieces)
    fails with ``IndexError: pyvec::index out of range: 0``. The value is only used with
    ``use_tempos``, so the fix gives such a score one tempo before the walk. Reproduction::

        s = symusic.Score(480); s.tracks.append(symusic.Track())
        s.tracks[0].notes.append(symusic.Note(0, 480, 60, 64))
        miditok.MuMIDI().encode(s)  # IndexError: pyvec::index out of range: 0
    """
    if type(tok).__name__ == "PerTok" and tok.config.use_time_signatures:
        resample = tok._resample_score  # the bound PerTok method

        def _resample_dropping_unsupported(score: Any, new_tpq: int, time_signatures_copy: Any) -> Any:
            out = resample(score, new_tpq, time_signatures_copy)
            supported = set(tok.time_signatures)
            if any((ts.numerator, ts.denominator) not in supported for ts in out.time_signatures):
                kept = [ts for ts in out.time_signatures if (ts.numerator, ts.denominator) in supported]
                out.time_signatures = type(out.time_signatures)(kept)
            return out

        tok._resample_score = _resample_dropping_unsupported
    if type(tok).__name__ == "MuMIDI" and not tok.config.use_tempos:
        to_tokens = tok._score_to_tokens

        def _score_to_tokens_with_a_tempo(score: Any, *args: Any, **kwargs: Any) -> Any:
            if len(score.tempos) == 0:  # read, never used without use_tempos: any value gives the same ids
                import symusic

                score = score.copy()
                score.tempos.append(symusic.Tempo(0, 120.0))
            return to_tokens(score, *args, **kwargs)

        tok._score_to_tokens = _score_to_tokens_with_a_tempo
    return tok


def from_json(path: str | os.PathLike[str]) -> Any:
    """Any tokenizer saved by miditok (``tokenizer.json``)."""
    import miditok

    try:
        doc = json.loads(Path(path).read_text())
        cls = getattr(miditok, doc["tokenization"])
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise PresetError(f"{str(path)!r} is not a miditok tokenizer.json: {exc}") from None
    return with_workarounds(cls(params=Path(path)))


def tokenizer_json(tokenizer: Any, transform: dict[str, Any] | None) -> str:
    """The tokenizer in miditok's own file format, plus our transform, as canonical text."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(d)
        doc = json.loads((Path(d) / "tokenizer.json").read_text())
    doc["midicorpus_transform"] = transform
    return json.dumps(doc)  # key order kept: miditok builds the vocabulary in dict order


def tokenizer_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_from_text(text: str) -> tuple[Any, dict[str, Any] | None]:
    """A tokenizer back from :func:`tokenizer_json` text (used in the workers)."""
    import miditok

    doc = json.loads(text)
    transform = doc.pop("midicorpus_transform", None)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "tokenizer.json"
        p.write_text(json.dumps(doc))
        tok = getattr(miditok, doc["tokenization"])(params=p)
    return with_workarounds(tok), transform


def apply_transform(score: Any, transform: dict[str, Any] | None) -> Any:
    """Score transforms a preset needs before encoding.

    ``fixed_tempo_bpm`` + ``tpq``: re-time the score in absolute time, so that one tick is
    a fixed duration (50 tpq at 120 bpm: 10 ms) whatever the file's tempo map.
    ``merge_to_piano``: all pitched tracks become one program-0 track (drums dropped).
    """
    if not transform:
        return score
    if "fixed_tempo_bpm" in transform:
        import symusic

        bpm, tpq = float(transform["fixed_tempo_bpm"]), int(transform["tpq"])
        per_s = bpm / 60.0 * tpq  # ticks per second
        sec = score.to("second")
        out = symusic.Score(tpq)
        out.tempos.append(symusic.Tempo(0, bpm))
        merge = bool(transform.get("merge_to_piano"))
        piano = symusic.Track("piano", 0, False)
        for tr in sec.tracks:
            if merge and tr.is_drum:
                continue
            t = piano if merge else symusic.Track(tr.name, tr.program, tr.is_drum)
            for n in tr.notes:
                start = round(n.time * per_s)
                end = max(start + 1, round((n.time + n.duration) * per_s))
                t.notes.append(symusic.Note(start, end - start, n.pitch, n.velocity))
            for pd in tr.pedals:
                start = round(pd.time * per_s)
                t.pedals.append(symusic.Pedal(start, max(1, round(pd.duration * per_s))))
            if not merge:
                out.tracks.append(t)
        if merge:
            piano.notes.sort()
            piano.pedals.sort()
            out.tracks.append(piano)
        return out
    raise ValueError(f"unknown transform {transform!r}")
