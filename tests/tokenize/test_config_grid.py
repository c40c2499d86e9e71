"""Config grid in the style of MidiTok's own tests: scheme x options x real files.

Every tokenizer configuration of the grid either goes through the fast path, which must
give miditok's ids exactly on every real file of ``../shared/data``, or is refused by
``fastpath.supports`` (the stage then runs miditok itself, so the ids cannot differ). The
options a configuration sets decide which of the two it must be: a refusal of an option the
fast path covers fails the test as surely as a different id.

The default run takes a fixed sample of the grid on every fourth real file; the whole grid
on every real file runs under the ``slow`` marker.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

miditok = pytest.importorskip("miditok")

from corpus.tokenize import fastpath  # noqa: E402 - after the importorskip guard
from tests.tokenize.test_fastpath import _first_difference, real_scores  # noqa: E402, F401 - fixture

# "MMM-<base>": MMM over that base tokenizer (MMM sets its own program options: one block per
# track, a Program token per block, none per note, so the PROGRAMS axis cannot change its ids)
CLASSES = ("REMI", "TSD", "MIDILike", "Structured", "CPWord", "Octuple", "MMM-REMI", "MMM-TSD", "MMM-MIDILike")
TIME = {
    "plain": {},
    "tempos": {"use_tempos": True},
    "timesigs": {"use_time_signatures": True},
    "tempos+timesigs": {"use_tempos": True, "use_time_signatures": True},
}
PROGRAMS = {
    "per-track": {},
    "programs-one-stream": {"use_programs": True},
    "programs-per-track": {"use_programs": True, "one_token_stream_for_programs": False},
}
RESOLUTION = {
    "default-res": {},
    "beat_res-4-2": {"beat_res": {(0, 4): 4, (4, 12): 2}},
    "beat_res-12-4+vel8": {"beat_res": {(0, 2): 12, (2, 8): 4}, "num_velocities": 8},
    "vel64+tempos16": {"num_velocities": 64, "num_tempos": 16, "tempo_range": (50, 200)},
}
EXTRA = {
    "": {},
    "no-velocities": {"use_velocities": False},
    "durations-some-programs": {"use_note_duration_programs": list(range(0, 64))},
    # options the fast path does not produce tokens for: miditok must be used
    # (rests at most 4 per beat: miditok wants them no finer than the coarsest beat_res here)
    "rests": {"use_rests": True, "beat_res_rest": {(0, 1): 4, (1, 2): 2, (2, 12): 1}},
    "sustain-pedals": {"use_sustain_pedals": True},
    "pitch-bends": {"use_pitch_bends": True},
    "chords": {"use_chords": True},
}
NOT_ON_FAST_PATH = {"rests", "sustain-pedals", "pitch-bends", "chords"}
# options a scheme switches off itself, so they cannot change its ids: Structured allows
# none of them in its token order, CPWord has no pedal / pitch-bend slot, Octuple none
SWITCHED_OFF = {
    "Structured": NOT_ON_FAST_PATH,
    "CPWord": {"sustain-pedals", "pitch-bends"},
    "Octuple": NOT_ON_FAST_PATH,  # Octuple has no slot for any of them
}


def _grid() -> list[tuple[str, str, dict[str, Any], bool]]:
    """(id, class, config kwargs, expected on the fast path): every class x time x programs x
    resolution, each with one of the extra options in turn (432 configurations)."""
    out = []
    extras = list(EXTRA.items())
    product = itertools.product(CLASSES, TIME.items(), PROGRAMS.items(), RESOLUTION.items())
    for i, (cls, (tn, t), (pn, p), (rn, r)) in enumerate(product):
        en, e = extras[i % len(extras)]
        name = "-".join(x for x in (cls, tn, pn, rn, en) if x)
        fast = en not in NOT_ON_FAST_PATH or en in SWITCHED_OFF.get(cls, set())
        out.append((name, cls, {**t, **p, **r, **e}, fast))
    return out


GRID = _grid()
# Two configurations per class, so that every scheme is in the default run.
_RNG = random.Random(16)
SAMPLE = [g for cls in CLASSES for g in _RNG.sample([g for g in GRID if g[1] == cls], 2)]


def _tokenizer(cls: str, kwargs: dict[str, Any]) -> Any:
    if cls.startswith("MMM-"):
        return miditok.MMM(miditok.TokenizerConfig(base_tokenizer=cls.removeprefix("MMM-"), **kwargs))
    return getattr(miditok, cls)(miditok.TokenizerConfig(**kwargs))


def _check(cls: str, kwargs: dict[str, Any], fast_expected: bool, named_scores: list) -> None:
    tokenizer = _tokenizer(cls, kwargs)
    assert fastpath.supports(tokenizer) == fast_expected, kwargs
    if not fast_expected:
        return  # refused up front: the stage encodes with miditok
    fast = fastpath.FastTokenizer(tokenizer)
    mismatches = []
    for name, score in named_scores:
        try:
            expected = fastpath.miditok_ids(tokenizer.encode(score))
        except Exception as err:  # noqa: BLE001 - the fast path must raise the same
            with pytest.raises(type(err)):
                fast.encode_ids(score)
            continue
        got = fast.encode_ids(score)
        if got != expected:
            mismatches.append(f"{name}: {_first_difference(tokenizer, expected, got)}")
    assert not mismatches, f"{len(mismatches)}/{len(named_scores)} differ:\n" + "\n".join(mismatches[:5])
    assert fast.fallbacks < len(named_scores) / 10, "most pieces should stay on the fast path"


@pytest.mark.parametrize(("cls", "kwargs", "fast_expected"), [g[1:] for g in SAMPLE], ids=[g[0] for g in SAMPLE])
def test_sampled_grid_gives_miditok_ids(cls, kwargs, fast_expected, real_scores):  # noqa: F811 - fixture
    _check(cls, kwargs, fast_expected, real_scores[::4])


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "kwargs", "fast_expected"), [g[1:] for g in GRID], ids=[g[0] for g in GRID])
def test_full_grid_gives_miditok_ids(cls, kwargs, fast_expected, real_scores):  # noqa: F811 - fixture
    _check(cls, kwargs, fast_expected, real_scores)


def test_grid_covers_each_option_both_ways() -> None:
    """The sample keeps at least one fast and one refused configuration."""
    assert {g[3] for g in SAMPLE} == {True, False}
    assert {g[1] for g in SAMPLE} == set(CLASSES)
