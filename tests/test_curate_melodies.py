"""curate --extract-melodies over real multitrack files (Lakh, miditok's pop songs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curate import curate
from corpus.curation import melody, roles
from corpus.curation.texture import track_texture
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource
from corpus.sources.lakh import LakhSource

LICENCE = "test-licence-miditok"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("m") / "lake")
    with lake.lock("test"), Engine(workers=2) as e:
        ingest(lake, LakhSource(data_dir / "lakh" / "lmd_full"), e, IngestConfig())
        ingest(lake, DirSource(data_dir / "midi" / "miditok", name="midi", license=LICENCE), e, IngestConfig())
        s = curate(lake, e, extract_melodies=True)
    assert s.failed == 0
    assert s.melodies and s.melodies > 10, s.line()
    assert s.melody_counts["errors"] == 0 and s.melody_counts["skipped"] == 0
    return lake


def q(lake: Lake, sql: str) -> list[tuple]:
    con = lake.connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def notes_of(score: symusic.Score, idx: int) -> dict[str, np.ndarray]:
    return score.tracks[idx].notes.numpy()


def test_the_melody_role_track_of_a_polyphonic_piece_is_extracted(lake: Lake) -> None:
    expected = set(
        q(
            lake,
            "SELECT t.piece_id, t.track_index FROM tracks t JOIN features f USING (piece_id) "
            "JOIN pieces p USING (piece_id) "
            f"WHERE p.source <> 'melody' AND f.texture = 'polyphonic' AND t.texture = 'monophonic' "
            f"AND t.role = 'melody' AND NOT t.is_drum AND t.n_notes >= {melody.MIN_MELODY_NOTES}",
        )
    )
    got = q(lake, "SELECT parent_piece_id, parent_track FROM pieces WHERE source = 'melody'")
    assert len(got) == len(set(got)) == len(expected) > 10
    assert set(got) == expected
    # one melody per parent, the track the piece's row names, never a bass line or another single line
    parents = [p for p, _ in got]
    assert len(parents) == len(set(parents))
    (named,) = q(
        lake,
        "SELECT count(*) FROM pieces m JOIN features f ON f.piece_id = m.parent_piece_id "
        "WHERE m.source = 'melody' AND f.melody_track = m.parent_track",
    )[0]
    assert named == len(got)
    (others,) = q(
        lake,
        "SELECT count(*) FROM tracks t JOIN features f USING (piece_id) JOIN pieces p USING (piece_id) "
        f"WHERE p.source <> 'melody' AND f.texture = 'polyphonic' AND t.texture = 'monophonic' "
        f"AND t.role <> 'melody' AND NOT t.is_drum AND t.n_notes >= {melody.MIN_MELODY_NOTES}",
    )[0]
    assert others > 0  # monophonic tracks that are not the melody exist and were left alone
    # measured against the track names (never a feature): of the extracted tracks whose name says
    # what they do, the melodies are named so and no bass line, chord or bridge track is taken
    stated = [
        roles.role_from_name(n)
        for (n,) in q(
            lake,
            "SELECT t.name FROM pieces m JOIN tracks t ON t.piece_id = m.parent_piece_id "
            "AND t.track_index = m.parent_track WHERE m.source = 'melody'",
        )
    ]
    stated = [r for r in stated if r is not None]
    assert len(stated) >= 4 and set(stated) == {"melody"}, stated
    (girls,) = q(
        lake,
        "SELECT t.name FROM pieces m JOIN tracks t ON t.piece_id = m.parent_piece_id "
        "AND t.track_index = m.parent_track WHERE m.source = 'melody' "
        "AND m.name LIKE 'Girls Just Want to Have Fun.mid#track%'",
    )
    assert girls == ("Melody",)
    # from the multitrack pop songs and from Lakh both
    names = {r[0] for r in q(lake, "SELECT name FROM pieces WHERE source = 'melody'")}
    assert any(n.startswith("All The Small Things.mid#track") for n in names), sorted(names)
    (lakh,) = q(
        lake,
        "SELECT count(*) FROM pieces m JOIN pieces p ON p.piece_id = m.parent_piece_id "
        "WHERE m.source = 'melody' AND p.source = 'lakh'",
    )[0]
    assert lakh > 0
    # nothing from monophonic pieces, drum tracks or short lines
    (bad,) = q(
        lake,
        "SELECT count(*) FROM pieces m JOIN features f ON f.piece_id = m.parent_piece_id "
        "JOIN tracks t ON t.piece_id = m.parent_piece_id AND t.track_index = m.parent_track "
        f"WHERE m.source = 'melody' AND (f.texture <> 'polyphonic' OR t.is_drum OR t.n_notes < {melody.MIN_MELODY_NOTES})",
    )[0]
    assert bad == 0


def test_derived_pieces_are_curated_monophonic_single_tracks(lake: Lake) -> None:
    rows = q(
        lake,
        "SELECT f.texture, f.n_tracks, f.n_pitched_tracks, f.n_drum_tracks, f.key_mode IS NOT NULL, "
        "f.dedup_cluster IS NOT NULL, p.status "
        "FROM pieces p JOIN features f USING (piece_id) WHERE p.source = 'melody'",
    )
    assert rows and set(rows) == {("monophonic", 1, 1, 0, True, True, "ok")}
    (mono,) = q(
        lake,
        "SELECT count(*) FROM tracks t JOIN pieces p USING (piece_id) WHERE p.source = 'melody' AND t.is_monophonic",
    )[0]
    assert mono == len(rows)


def test_lineage_and_content(lake: Lake) -> None:
    rows = q(
        lake,
        "SELECT m.piece_id, m.source_uri, m.parent_piece_id, m.parent_track, m.name, m.license, "
        "t.program, t.name, pp.license "
        "FROM pieces m JOIN tracks t ON t.piece_id = m.parent_piece_id AND t.track_index = m.parent_track "
        "JOIN (SELECT piece_id, any_value(license) AS license FROM pieces WHERE source <> 'melody' GROUP BY 1) pp "
        "ON pp.piece_id = m.parent_piece_id WHERE m.source = 'melody' ORDER BY 1",
    )
    assert rows
    licensed = 0
    for pid, uri, parent, track, name, lic, program, track_name, parent_lic in rows:
        assert uri == f"{parent}#track{track}" and name.endswith(f"#track{track}")
        assert lic == parent_lic
        licensed += lic == LICENCE
        parent_score = symusic.Score.from_midi(lake.get_raw(parent))
        data = lake.get_raw(pid)
        # deterministic: extracting again gives the same bytes, hence the same piece_id
        assert hashlib.sha256(melody.melody_midi(parent_score, track)).hexdigest() == pid
        child = symusic.Score.from_midi(data)
        assert len(child.tracks) == 1 and child.tpq == parent_score.tpq
        ct = child.tracks[0]
        assert ct.program == program and ct.name == track_name and not ct.is_drum
        a, b = notes_of(child, 0), notes_of(parent_score, track)
        for col in ("time", "duration", "pitch", "velocity"):
            assert np.array_equal(a[col], b[col]), (pid, col)
        assert track_texture(a, child.tpq)["is_monophonic"]
        for attr in ("tempos", "time_signatures", "key_signatures"):
            x, y = getattr(child, attr).numpy(), getattr(parent_score, attr).numpy()
            assert all(np.array_equal(x[k], y[k]) for k in y), (pid, attr)
    assert licensed > 0


def test_rerun_adds_nothing(lake: Lake) -> None:
    before = len(lake.commits())
    n = q(lake, "SELECT count(*) FROM pieces")[0][0]
    with lake.lock("again"), Engine(workers=1) as e:
        s = curate(lake, e, extract_melodies=True)
    assert s.analysed == 0 and s.melodies == 0 and s.melody_counts["candidates"] == 0
    assert len(lake.commits()) == before
    assert q(lake, "SELECT count(*) FROM pieces")[0][0] == n
    # ingesting the same derived items again is "unchanged" too (ingest's own idempotence)
    pid, parent, track = q(
        lake, "SELECT piece_id, parent_piece_id, parent_track FROM pieces WHERE source = 'melody' LIMIT 1"
    )[0]
    from corpus.sources.base import SourceItem

    item = SourceItem(source="melody", uri=melody.melody_uri(parent, track), data=lake.get_raw(pid))
    with lake.lock("again"), Engine(workers=0) as e:
        summary = ingest(lake, [item], e)
    assert summary.unchanged == 1 and len(lake.commits()) == before


def test_min_notes_option(lake: Lake) -> None:
    # every candidate is extracted already; a lower minimum finds the short lines left out
    assert melody.melody_candidates(lake) == []
    short = melody.melody_candidates(lake, min_notes=1)
    assert all(isinstance(i, int) for _, idx in short for i in idx)
    with lake.lock("x"), Engine(workers=0) as e, pytest.raises(ValueError):
        curate(lake, e, extract_melodies=True, min_melody_notes=0)


def test_extract_batch_rechecks(data_dir: Path) -> None:
    data = (data_dir / "midi" / "miditok" / "Funkytown.mid").read_bytes()
    score = symusic.Score.from_midi(data)
    drums = [i for i, t in enumerate(score.tracks) if t.is_drum]
    poly = [
        i
        for i, t in enumerate(score.tracks)
        if not t.is_drum and not track_texture(t.notes.numpy(), score.tpq)["is_monophonic"]
    ]
    mono = [
        i
        for i, t in enumerate(score.tracks)
        if not t.is_drum and len(t.notes) and track_texture(t.notes.numpy(), score.tpq)["is_monophonic"]
    ]
    assert drums and poly and mono
    ((pid, (status, got, skipped)),) = melody.extract_batch([("p", data, [*drums, *poly, *mono, 99])], 16)
    assert status == "ok" and [g[0] for g in got] == [i for i in mono if len(score.tracks[i].notes) >= 16]
    assert skipped == len(drums) + len(poly) + 1 + len(mono) - len(got)
