"""Song identity (song-v1) on real files: track signatures, verified matches, groups, no false merges.

The arrangements are POP909 songs (``../shared/arrangements``): every file of a song folder is
one composition. Two pairs of POP909 ids are one song too (017 = 018, 101 = 103: the same melody,
103 a fifth higher), so those are expected to merge.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curate import curate
from corpus.curation import songs
from corpus.curation.dedup import NearDupIndex
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource

SAME_SONG = {"018": "017", "103": "101"}  # POP909 ids that hold one song twice


def song_of(uri: str) -> str | None:
    m = re.search(r"(\d{3})/(?:versions/)?\d{3}(?:-v\d+)?\.mid$", uri)
    return SAME_SONG.get(m.group(1), m.group(1)) if m else None


# ------------------------------------------------------------------------------------ measure
def test_one_row_per_pitched_track_with_notes(data_dir: Path) -> None:
    score = symusic.Score(data_dir / "midi" / "miditok" / "Funkytown.mid")
    rows = songs.track_signatures(score, "p")
    want = [i for i, t in enumerate(score.tracks) if not t.is_drum and len(t.notes)]
    assert [r["track_index"] for r in rows] == want and len(want) < len(score.tracks)  # drums left out
    for r in rows:
        assert r["has_identity"] == (r["n_ngrams"] >= songs.MIN_TRACK_NGRAMS)
        if r["has_identity"]:
            g = np.asarray(r["ngrams"])
            assert len(g) == r["n_ngrams"] and np.all(np.diff(g) > 0)  # sorted, distinct
            assert np.linalg.norm(r["vector"]) == pytest.approx(1.0, abs=1e-5) and len(r["vector"]) == songs.TRACK_DIM
        else:
            assert r["ngrams"] is None and r["vector"] is None
    assert sum(r["skyline_share"] for r in rows) == pytest.approx(1.0, abs=1e-3)


def test_signatures_ignore_transposition_tempo_and_resolution(arrangements_dir: Path) -> None:
    score = symusic.Score(arrangements_dir / "001" / "001.mid")
    base = {r["track_index"]: r["ngrams"] for r in songs.track_signatures(score, "p")}
    moved = score.copy()
    for t in moved.tracks:
        t.shift_pitch(5)
    resampled = score.resample(96)
    for other in (moved, resampled):
        assert {r["track_index"]: r["ngrams"] for r in songs.track_signatures(other, "p")} == base


def test_verify_counts_shared_ngrams_exactly() -> None:
    a = np.array([1, 4, 9, 16, 25], np.int32)
    b = np.array([4, 16, 36], np.int32)
    assert songs.verify(a, b) == (2, 2 / 3)
    assert songs.verify(a, np.zeros(0, np.int32)) == (0, 0.0)


# ------------------------------------------------------------------------------------ groups
def test_group_songs_joins_links_and_shared_ids_and_names_groups_stably() -> None:
    ids = ["b", "a", "c", "d", "e"]
    g = songs.group_songs(ids, [("a", "b", "melody"), ("c", "a", "dedup")], {"d": ["msd:TR1"], "e": ["msd:TR1"]})
    assert g.group_of == {"a": "a", "b": "a", "c": "a", "d": "msd:TR1", "e": "msd:TR1"}
    assert g.joined_by == {"a": "dedup", "b": "melody", "c": "dedup", "d": "msd", "e": "msd"}
    # the order links and pieces arrive in does not change the names
    h = songs.group_songs(
        list(reversed(ids)), [("c", "a", "dedup"), ("b", "a", "melody")], {"e": ["msd:TR1"], "d": ["msd:TR1"]}
    )
    assert h.group_of == g.group_of
    assert songs.group_songs(["x"], [], {}).joined_by == {"x": "self"}


@pytest.fixture(scope="module")
def song_lake(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, arrangements_dir: Path) -> Lake:
    """60 POP909 songs (all their arrangements) beside the other real files: folk tunes, the
    Goldberg variations, pop songs over shared grooves, classical piano, Lakh."""
    lake = Lake(tmp_path_factory.mktemp("songs") / "lake")
    first = tmp_path_factory.mktemp("arr")
    for d in sorted(arrangements_dir.iterdir()):
        if d.is_dir() and int(d.name) <= 60 or d.name in ("101", "103"):
            shutil.copytree(d, first / d.name)  # a test's own copy: sources do not follow links
    with lake.lock("test"), Engine(workers=2) as e:
        ingest(lake, DirSource(first, name="pop909"), e, IngestConfig())
        ingest(lake, DirSource(data_dir / "midi", name="midi"), e, IngestConfig())
        ingest(lake, DirSource(data_dir / "mutopia", name="mutopia"), e, IngestConfig())
        s = curate(lake, e)
    assert s.failed == 0 and s.song_groups > 0
    return lake


def q(lake: Lake, sql: str, params: list | None = None) -> list[tuple]:
    con = lake.connect()
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def groups_by_song(lake: Lake) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    rows = q(
        lake,
        "SELECT DISTINCT p.source_uri, f.song_group FROM features f JOIN pieces p USING (piece_id) WHERE p.source = 'pop909'",
    )
    by_song: dict[str, set[str]] = {}
    by_group: dict[str, set[str]] = {}
    for uri, g in rows:
        s = song_of(uri)
        by_song.setdefault(s, set()).add(g)
        by_group.setdefault(g, set()).add(s)
    return by_song, by_group


def test_every_arrangement_of_a_song_is_in_one_group_and_no_group_mixes_songs(song_lake: Lake) -> None:
    by_song, by_group = groups_by_song(song_lake)
    assert len(by_song) == 60  # 001-060 with 018 = 017, and 101 = 103
    split = {s: g for s, g in by_song.items() if len(g) > 1}
    assert split == {}
    mixed = {g: s for g, s in by_group.items() if len(s) > 1}
    assert mixed == {}


def test_a_dedup_cluster_lies_inside_one_song_group(song_lake: Lake) -> None:
    (n,) = q(
        song_lake,
        "SELECT count(*) FROM (SELECT dedup_cluster FROM features GROUP BY 1 HAVING count(DISTINCT song_group) > 1)",
    )[0]
    assert n == 0


def test_goldberg_variations_folk_tunes_and_pop_grooves_stay_apart(song_lake: Lake) -> None:
    def n_groups(like: str, key: str) -> tuple[int, int]:
        return q(
            song_lake,
            f"SELECT count(DISTINCT {key}), count(DISTINCT f.song_group) FROM features f JOIN pieces p USING (piece_id) WHERE p.source_uri LIKE ?",
            [like],
        )[0]

    # thirty variations over one bass line: thirty compositions for the song rule
    assert n_groups("%bwv-988-v%.mid", "regexp_extract(p.source_uri, 'bwv-988-v(\\d+)', 1)") == (30, 30)
    # Nottingham folk tunes share stock openings and cadences
    tunes, groups = n_groups("%Nottingham%", "p.source_uri")
    assert tunes == groups and tunes > 30
    # pop songs of one era, several over the same drum groove and four-chord loops
    pop = [
        "All The Small Things",
        "I Gotta Feeling",
        "Girls Just Want to Have Fun",
        "Shut Up",
        "Funkytown",
        "In Too Deep",
        "Mr. Blue Sky",
    ]
    rows = q(
        song_lake,
        "SELECT DISTINCT p.source_uri, f.song_group FROM features f JOIN pieces p USING (piece_id) WHERE p.source_uri LIKE '%/miditok/%'",
    )
    groups_of = {uri.rsplit("/", 1)[-1][:-4]: g for uri, g in rows}
    assert len({groups_of[t] for t in pop}) == len(pop)


def test_melody_matches_join_only_the_same_composition(song_lake: Lake) -> None:
    """Every pair of files of the shared data that the melody rule joins, named: all are one work."""
    rows = q(
        song_lake,
        "WITH u AS (SELECT piece_id, min(regexp_replace(source_uri, '.*/', '')) AS f, bool_or(source = 'pop909') AS pop "
        "FROM pieces GROUP BY 1) SELECT DISTINCT least(a.f, b.f), greatest(a.f, b.f) FROM song_matches m "
        "JOIN u a ON a.piece_id = m.piece_a JOIN u b ON b.piece_id = m.piece_b WHERE m.joins AND NOT (a.pop AND b.pop) "
        "AND a.f <> b.f",
    )
    assert sorted(rows) == [
        ("bach_847.mid", "bwv-847.mid"),  # two editions of the Prelude and Fugue in C minor
        ("example_complex.mid", "example_complex__db351ea7.mid"),  # test copies of one file
        ("example_complex.mid", "example_complex__e8f88888.mid"),
        ("example_complex__db351ea7.mid", "example_complex__e8f88888.mid"),
        ("fur_elise.mid", "fur_elise_2.mid"),  # two editions
        ("symphony_7_2.mid", "symphony_7_2_singletrack.mid"),  # multitrack and single-track saves
    ]
    # two arrangements of "Mary Had a Little Lamb": too few distinct n-grams once repeated notes merge
    # (no track identity), one song through their whole-piece vectors (one dedup cluster)
    rows = q(
        song_lake,
        "SELECT DISTINCT f.song_group FROM features f JOIN pieces p USING (piece_id) "
        "WHERE p.source_uri LIKE '%/mary.mid' OR p.source_uri LIKE '%/test-karaoke-kar.mid'",
    )
    assert len(rows) == 1


def test_matched_tracks_are_kept_as_evidence(song_lake: Lake) -> None:
    rows = q(song_lake, "SELECT track_a, track_b, cosine, shared_ngrams, containment, joins FROM song_matches")
    assert rows and all(0.0 <= r[4] <= 1.0 and r[3] >= 0 for r in rows)
    for *_, shared, cont, joins in rows:
        assert joins == songs.passes(cont, shared)
    (n,) = q(song_lake, "SELECT count(*) FROM track_signatures WHERE has_identity")[0]
    assert n > 0


def test_index_matches_what_is_stored(song_lake: Lake) -> None:
    from corpus.curate import load_index

    idx = load_index(song_lake, "tracks", songs.TRACK_CONFIG)
    keys = {
        f"{p}:{t}" for p, t in q(song_lake, "SELECT piece_id, track_index FROM track_signatures WHERE has_identity")
    }
    assert isinstance(idx, NearDupIndex) and set(idx.piece_ids) == keys and idx.meta["pairs_stored"]


def test_matching_in_duckdb_decides_what_the_python_verification_decides(song_lake: Lake) -> None:
    """match_tracks_sql (what curate runs: candidates as one Arrow table, n-grams intersected in
    DuckDB) gives the matches of match_tracks (n-gram sets as NumPy arrays, verified one by one),
    pair for pair, on every identity track of the real files."""
    from corpus.curate import load_index

    idx = load_index(song_lake, "tracks", songs.TRACK_CONFIG)
    sig = f"SELECT piece_id, track_index, ngrams FROM track_signatures_t WHERE scheme = '{songs.TRACK_SCHEME}'"
    con = song_lake.connect()
    try:
        grams = {f"{p}:{t}": np.asarray(g, np.int32) for p, t, g in con.execute(sig).fetchall() if g is not None}
        in_sql = songs.match_tracks_sql(con, idx, idx.piece_ids, sig)
        # what curate asks for: piece ids as dictionary codes, the same table once decoded
        plain = songs.match_tracks_table(con, idx, idx.piece_ids, sig)
        coded = songs.match_tracks_table(con, idx, idx.piece_ids, sig, dictionary=True)
    finally:
        con.close()
    in_python = songs.match_tracks(idx, idx.piece_ids, grams)
    assert len(in_python) > 100
    assert in_sql == in_python  # every field, the tracks of the best pair included (ties: the first candidate)
    assert str(coded.schema.field("piece_a").type) == "dictionary<values=string, indices=int32, ordered=0>"
    assert songs.plain_matches(coded).equals(plain) and plain.schema == songs.empty_matches().schema
    rows = songs.match_rows(coded, "r1")
    assert rows.column("run_id").to_pylist() == ["r1"] * len(in_python)
    assert rows.column("piece_b").to_pylist() == [m.piece_b for m in in_python]


# ------------------------------------------------------------------------------------ incremental
def _files(arrangements_dir: Path, lo: int, hi: int, dst: Path) -> Path:
    dst.mkdir()
    for d in sorted(arrangements_dir.iterdir()):
        if d.is_dir() and lo <= int(d.name) <= hi:
            shutil.copytree(d, dst / d.name)
    return dst


def _groups(lake: Lake) -> list[tuple]:
    return q(lake, "SELECT piece_id, song_group, dedup_cluster FROM features ORDER BY 1")


def test_a_delta_curate_gives_the_groups_of_one_run_and_a_noop_writes_nothing(
    tmp_path: Path, arrangements_dir: Path
) -> None:
    a = _files(arrangements_dir, 1, 12, tmp_path / "a")
    b = _files(arrangements_dir, 13, 20, tmp_path / "b")
    once, twice = Lake(tmp_path / "once"), Lake(tmp_path / "twice")
    with Engine(workers=1) as e:
        with once.lock("t"):
            ingest(once, DirSource(a, name="pop909"), e, IngestConfig())
            ingest(once, DirSource(b, name="pop909"), e, IngestConfig())
            curate(once, e)
        with twice.lock("t"):
            ingest(twice, DirSource(a, name="pop909"), e, IngestConfig())
            curate(twice, e)
            ingest(twice, DirSource(b, name="pop909"), e, IngestConfig())
            s = curate(twice, e)
            assert s.analysed > 0
            commits = len(twice.commits())
            noop = curate(twice, e)
            assert noop.analysed == 0 and len(twice.commits()) == commits  # nothing new: nothing written
    assert _groups(twice) == _groups(once)
    by_song, by_group = groups_by_song(twice)
    assert all(len(g) == 1 for g in by_song.values()) and all(len(s) == 1 for s in by_group.values())


def test_changing_the_threshold_redecides_without_analysis(tmp_path: Path, arrangements_dir: Path) -> None:
    lake = Lake(tmp_path / "lake")
    src = _files(arrangements_dir, 32, 32, tmp_path / "a")  # 032: two melody versions, containment 0.67
    with Engine(workers=1) as e, lake.lock("t"):
        ingest(lake, DirSource(src, name="pop909"), e, IngestConfig())
        curate(lake, e)
        assert len({g for _, g, _ in _groups(lake)}) == 1
        strict = curate(lake, e, song_threshold=0.9)
        assert strict.analysed == 0
        assert len({g for _, g, _ in _groups(lake)}) == 2  # the two dedup clusters of 032
        assert {r[0] for r in q(lake, "SELECT DISTINCT threshold FROM song_groups")} == {0.9}
        curate(lake, e)
        assert len({g for _, g, _ in _groups(lake)}) == 1
        with pytest.raises(ValueError, match="song threshold must be a containment"):
            curate(lake, e, song_threshold=1.5)


def test_an_extracted_melody_joins_its_parents_group(tmp_path: Path, arrangements_dir: Path) -> None:
    lake = Lake(tmp_path / "lake")
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(arrangements_dir / "001" / "001.mid", src / "001.mid")
    with Engine(workers=1) as e, lake.lock("t"):
        ingest(lake, DirSource(src, name="pop909"), e, IngestConfig())
        s = curate(lake, e, extract_melodies=True)
    assert s.melodies and s.melodies > 0
    rows = q(lake, "SELECT p.source, f.song_group FROM features f JOIN pieces p USING (piece_id)")
    assert {src for src, _ in rows} == {"pop909", "melody"}
    assert len({g for _, g in rows}) == 1
    assert {j for (j,) in q(lake, "SELECT joined_by FROM song_groups")} <= {"lineage", "dedup", "melody"}


def test_similar_shows_both_levels_and_the_matched_tracks(song_lake: Lake) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    rows = q(
        song_lake,
        "SELECT piece_id, source_uri FROM pieces WHERE source = 'pop909' AND source_uri LIKE '%032/versions/032-v1.mid'",
    )
    pid = rows[0][0]
    peers = {
        p
        for (p,) in q(
            song_lake,
            "SELECT piece_id FROM features WHERE song_group = (SELECT song_group FROM features WHERE piece_id = ?) AND piece_id <> ?",
            [pid, pid],
        )
    }
    r = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(song_lake.root), "similar", pid[:12], "--k", "8"],
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "song group " in out and f"({len(peers) + 1} pieces)" in out and "dedup cluster " in out
    evidence = out.split("song evidence (verified track matches, rule song-v1):")[1].split("song group members")[0]
    shown = {line.split()[1] for line in evidence.strip().splitlines()[2:]}
    assert shown and shown <= peers
    assert all(line.split()[6] == "True" for line in evidence.strip().splitlines()[2:])
    bad = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(song_lake.root), "similar", "zzzz"],
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "midicorpus: error: no curated piece with id 'zzzz'; give more of the sha256"
    ]


def test_a_lake_curated_before_song_groups_gets_its_signatures_once(
    tmp_path: Path, arrangements_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _files(arrangements_dir, 1, 6, tmp_path / "a")
    fresh, old = Lake(tmp_path / "fresh"), Lake(tmp_path / "old")
    with Engine(workers=0) as e:  # in-process: the stand-in for the old analysis reaches the worker
        with fresh.lock("t"):
            ingest(fresh, DirSource(src, name="pop909"), e, IngestConfig())
            curate(fresh, e)
        with old.lock("t"):
            ingest(old, DirSource(src, name="pop909"), e, IngestConfig())
            with monkeypatch.context() as m:  # the analysis of a release without track signatures
                m.setattr(songs, "track_signatures", lambda score, piece_id: [])
                curate(old, e)
            assert q(old, "SELECT count(*) FROM track_signatures")[0][0] == 0
            up = curate(old, e)
            assert up.analysed == 0 and up.signed == q(old, "SELECT count(*) FROM features")[0][0]
            assert "track signatures added to" in up.line()
            assert curate(old, e).signed == 0
    assert _groups(old) == _groups(fresh)
