"""Presets build miditok tokenizers; the workarounds for miditok bugs keep miditok's ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.tokenize import presets

# real files whose time signatures PerTok's default range lacks (2/2, 3/2, 9/8, 12/16...)
UNSUPPORTED_TS = [
    "midi/muspy/time-signatures.mid",
    "midi/tonejs-midi/claire_de_lune.MID",
    "mutopia/ftp/BachJS/BWV988/bwv-988-v11/bwv-988-v11.mid",
]


def _pertok_with_time_signatures() -> tuple[object, object]:
    import miditok

    config = dict(presets.PRESETS["pertok"].config, use_time_signatures=True)
    raw = miditok.PerTok(miditok.TokenizerConfig(**config))
    return raw, presets.with_workarounds(miditok.PerTok(miditok.TokenizerConfig(**config)))


@pytest.mark.parametrize("name", UNSUPPORTED_TS)
def test_pertok_drops_unsupported_time_signatures_like_every_other_tokenizer(name: str, data_dir: Path) -> None:
    """miditok 3.1's PerTok fails with KeyError 'TimeSig_2/2'; with the workaround its ids are
    miditok's own ids for the score with those time signatures removed."""
    import symusic

    raw, fixed = _pertok_with_time_signatures()
    score = symusic.Score(data_dir / name)
    supported = set(raw.time_signatures)
    assert any((ts.numerator, ts.denominator) not in supported for ts in score.time_signatures)
    with pytest.raises(KeyError, match="TimeSig_"):  # fixed upstream? then drop the workaround
        raw.encode(score)
    cleaned = score.copy()
    cleaned.time_signatures = type(score.time_signatures)(
        [ts for ts in score.time_signatures if (ts.numerator, ts.denominator) in supported]
    )
    assert fixed.encode(score).ids == raw.encode(cleaned).ids


def test_pertok_workaround_leaves_supported_files_alone(data_dir: Path) -> None:
    import symusic

    raw, fixed = _pertok_with_time_signatures()
    for name in ("midi/miditok/Mr. Blue Sky.mid", "mutopia/ftp/BachJS/BWV988/bwv-988-v01/bwv-988-v01.mid"):
        score = symusic.Score(data_dir / name)
        assert fixed.encode(score).ids == raw.encode(score).ids


def test_every_constructor_applies_the_workarounds(tmp_path: Path) -> None:
    tok, transform = presets.build("pertok")
    assert tok.config.use_time_signatures
    assert "_resample_score" in vars(tok)  # the instance carries the fix
    text = presets.tokenizer_json(tok, transform)
    again, _ = presets.load_from_text(text)
    assert "_resample_score" in vars(again)
    tok.save(tmp_path)
    assert "_resample_score" in vars(presets.from_json(tmp_path / "tokenizer.json"))
    remi, _ = presets.build("remi")
    assert "_resample_score" not in vars(remi)


@pytest.mark.parametrize("name", ["midi/python-midi/mary.mid", "midi/muspy/mono.mid"])
def test_mumidi_encodes_files_without_a_tempo(name: str, data_dir: Path) -> None:
    """miditok 3.1's MuMIDI reads ``score.tempos[0]`` even without tempo tokens and fails on a
    file without a tempo event; with the workaround the ids are miditok's ids for that file
    given any tempo (the value is never used)."""
    import miditok
    import symusic

    config = presets.PRESETS["mumidi"].config
    raw = miditok.MuMIDI(miditok.TokenizerConfig(**config))
    fixed, _ = presets.build("mumidi")
    score = symusic.Score(data_dir / name)
    assert len(score.tempos) == 0
    with pytest.raises(IndexError):  # fixed upstream? then drop the workaround
        raw.encode(score)
    ids = fixed.encode(score).ids
    assert len(ids) > 0
    for bpm in (60.0, 150.0):
        with_tempo = score.copy()
        with_tempo.tempos.append(symusic.Tempo(0, bpm))
        assert ids == raw.encode(with_tempo).ids


def test_mumidi_workaround_leaves_files_with_tempos_alone(data_dir: Path) -> None:
    import miditok
    import symusic

    raw = miditok.MuMIDI(miditok.TokenizerConfig(**presets.PRESETS["mumidi"].config))
    fixed, _ = presets.build("mumidi")
    score = symusic.Score(data_dir / "midi/miditok/Mr. Blue Sky.mid")
    assert len(score.tempos) > 0
    assert fixed.encode(score).ids == raw.encode(score).ids
