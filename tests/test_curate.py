"""The curate stage over a lake of real files: texture, key, clusters, idempotence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from corpus.curate import curate
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource
from corpus.sources.lakh import LakhSource
from corpus.sources.lpd import LpdSource


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("c") / "lake")
    with lake.lock("test"), Engine(workers=2) as e:
        for src in (
            LakhSource(data_dir / "lakh" / "lmd_full"),
            LpdSource(data_dir / "lpd"),
            DirSource(data_dir / "mutopia", name="mutopia"),
            DirSource(data_dir / "lakh_derived", name="meloform"),
            DirSource(data_dir / "midi", name="midi"),
        ):
            ingest(lake, src, e, IngestConfig())
        s = curate(lake, e)
    assert s.failed == 0 and s.analysed > 250
    return lake


def q(lake: Lake, sql: str) -> list[tuple]:
    con = lake.connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_every_ok_piece_is_curated(curated: Lake) -> None:
    (missing,) = q(curated, "SELECT count(*) FROM features WHERE texture IS NULL")[0]
    assert missing == 0
    (no_key,) = q(
        curated, "SELECT count(*) FROM features WHERE key_mode IS NULL AND texture NOT IN ('drums_only', 'empty')"
    )[0]
    assert no_key == 0


def test_melodies_are_monophonic_and_chorales_polyphonic(curated: Lake) -> None:
    # MeloForm's extracted melodies: most are strictly one line; five keep chords from their source
    # (PROVENANCE.tsv: symusic max polyphony 3-4 per track), and those must not pass as monophonic
    rows = dict(
        q(
            curated,
            "SELECT f.texture, count(*) FROM pieces p JOIN features f USING (piece_id) WHERE p.source = 'meloform' GROUP BY 1",
        )
    )
    assert rows == {"monophonic": 32, "polyphonic": 5}
    rows = q(
        curated, "SELECT DISTINCT f.texture FROM pieces p JOIN features f USING (piece_id) WHERE p.source = 'mutopia'"
    )
    assert rows == [("polyphonic",)]
    # the monophonic corpus is selectable per track too
    (mono_tracks,) = q(curated, "SELECT count(*) FROM tracks WHERE is_monophonic AND NOT is_drum")[0]
    assert mono_tracks > 37


def test_goldberg_variations_stay_apart(curated: Lake) -> None:
    (n,) = q(
        curated,
        "SELECT count(DISTINCT f.dedup_cluster) FROM pieces p JOIN features f USING (piece_id) "
        "WHERE p.source = 'mutopia' AND p.name LIKE 'bwv-988-v%'",
    )[0]
    assert n == 30


def test_lpd_piece_joins_its_lakh_midi(curated: Lake) -> None:
    rows = q(
        curated,
        "SELECT p.source, f.dedup_cluster FROM pieces p JOIN features f USING (piece_id) "
        "WHERE p.lmd_md5 = 'd6caebd1964d9e4a3c5ea59525230e2a' ORDER BY p.source",
    )
    assert [r[0] for r in rows] == ["lakh", "lpd"]
    assert rows[0][1] == rows[1][1]


def test_rerun_adds_nothing(curated: Lake) -> None:
    before = len(curated.commits())
    with curated.lock("again"), Engine(workers=1) as e:
        s = curate(curated, e)
    assert s.analysed == 0 and len(curated.commits()) == before


def test_similar_from_the_saved_index(curated: Lake) -> None:
    from corpus.curation.dedup import NearDupIndex, similar

    index = NearDupIndex.load(curated.root / "index" / "neardup")
    (pid,) = q(curated, "SELECT piece_id FROM pieces WHERE name = 'fur_elise.mid'")[0]
    (other,) = q(curated, "SELECT piece_id FROM pieces WHERE name = 'fur_elise_2.mid'")[0]
    hits = similar(index, pid, 3)
    assert hits[0][0] == other and hits[0][1] > 0.8


def _decided(lake: Lake) -> list[tuple]:
    return q(
        lake,
        "SELECT d.piece_id, d.dedup_cluster, d.is_representative, g.song_group, g.joined_by "
        "FROM dedup_latest d JOIN song_groups_latest g USING (piece_id) ORDER BY 1",
    )


@pytest.mark.parametrize("index_kind", ["flat", "ivf"])
def test_nightly_delta_curates_decide_what_one_run_over_everything_decides(
    tmp_path: Path, data_dir: Path, index_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each source arriving on its own night, curated in scope ``delta``, ends where one curate of
    them all ends: clusters, representatives, song groups, how each piece joined, and the totals.
    The nights include a Lakh md5 that links new pieces to older ones (LPD is derived from Lakh),
    bytes already curated arriving again with a Lakh md5 (new metadata for old pieces), an MSD id,
    extracted melodies (lineage), and an expired lake version (``lake maintain``: scope ``full``).
    ``ivf``: the indexes are IVF saved in shards of 16 vectors (as on a Lakh-sized lake), so each
    night reads the saved shards, adds to the last one and links the others into the next version."""
    if index_kind == "ivf":
        from corpus.curation import dedup

        monkeypatch.setattr(dedup, "EXACT_MAX_N", 20)
        monkeypatch.setattr(dedup, "SHARD_N", 16)
    nights = [
        LpdSource(data_dir / "lpd"),
        DirSource(data_dir / "lakh" / "lmd_full", name="plain"),
        LakhSource(data_dir / "lakh" / "lmd_full"),
        DirSource(data_dir / "lakh_derived", name="meloform"),
        DirSource(data_dir / "mutopia", name="mutopia"),
    ]
    once, nightly = Lake(tmp_path / "once"), Lake(tmp_path / "nightly")
    with Engine(workers=1) as e:
        with once.lock("t"):
            for src in nights:
                ingest(once, src, e, IngestConfig())
            one = curate(once, e, extract_melodies=True)
        with nightly.lock("t"):
            for night, src in enumerate(nights):
                ingest(nightly, src, e, IngestConfig())
                if night == 1:
                    nightly.maintain(keep_days=0)  # the last decision's lake version is gone
                last = curate(nightly, e, extract_melodies=True)
    scopes = [r[0] for r in q(nightly, "SELECT scope FROM curate_decisions ORDER BY decided_at")]
    assert scopes == ["full", "full", "delta", "delta", "delta"]
    assert [r[0] for r in q(once, "SELECT scope FROM curate_decisions")] == ["full"]
    assert _decided(nightly) == _decided(once)
    totals = ("pieces", "clusters", "duplicate_pairs", "song_groups", "song_pairs")
    assert [getattr(last, k) for k in totals] == [getattr(one, k) for k in totals]
    assert q(
        nightly,
        "SELECT pieces, clusters, duplicate_pairs, song_groups, song_pairs FROM curate_decisions "
        "ORDER BY decided_at DESC LIMIT 1",
    ) == [tuple(getattr(one, k) for k in totals)]
    # the LPD piece converted from a Lakh file and that file (ingested two nights later): one cluster, one song
    linked = q(
        nightly,
        "SELECT count(DISTINCT p.piece_id), count(DISTINCT d.dedup_cluster), count(DISTINCT g.song_group) "
        "FROM pieces p JOIN dedup_latest d USING (piece_id) JOIN song_groups_latest g USING (piece_id) "
        "WHERE p.lmd_md5 = 'd6caebd1964d9e4a3c5ea59525230e2a'",
    )
    assert linked == [(2, 1, 1)]
    assert {r[0] for r in q(nightly, "SELECT DISTINCT joined_by FROM song_groups_latest")} >= {"lineage", "self"}
    # the delta decisions decided again far fewer pieces than the lake holds (an IVF index this small
    # is rebuilt when the lake doubles, which makes every piece new)
    (redecided, pieces) = q(nightly, "SELECT redecided, pieces FROM curate_decisions ORDER BY decided_at DESC LIMIT 1")[
        0
    ]
    assert redecided < pieces or index_kind == "ivf"
    if index_kind == "ivf":
        for name in ("neardup", "tracks"):
            meta = json.loads((nightly.root / "index" / name / "meta.json").read_text())
            assert meta["kind"] == "ivf" and len(meta["shards"]) > 2 and sum(meta["shards"]) == meta["n"]


def test_a_progress_bar_is_told_when_clusters_and_groups_are_decided(tmp_path: Path, data_dir: Path) -> None:
    """The decision after the analysis counts nothing for minutes on a large lake: the bar says what runs."""
    phases: list[str] = []

    class Bar:
        def __call__(self, summary: object) -> None:
            pass

        def phase(self, status: str) -> None:
            phases.append(status)

    lake = Lake(tmp_path / "lake")
    with lake.lock("t"), Engine(workers=1) as e:
        ingest(lake, DirSource(data_dir / "lakh" / "lmd_full", name="l"), e, IngestConfig())
        curate(lake, e, progress=Bar())
        curate(lake, e, progress=Bar())  # nothing new: nothing decided
    assert phases == ["deciding dedup clusters and song groups (near-duplicate and melody matches)"]


def test_pieces_analysed_by_an_older_version_are_analysed_again_once(tmp_path: Path, data_dir: Path) -> None:
    """A lake curated before the expressive and role columns existed (curate-v1 rows, those columns
    NULL) is analysed again by the next curate, which says so; the rows are replaced, not added;
    the clusters and groups stay as decided; the run after that does nothing."""
    from corpus.curate import CURATE_VERSION

    lake = Lake(tmp_path / "lake")
    with lake.lock("t"), Engine(workers=1) as e:
        ingest(lake, DirSource(data_dir / "lakh" / "lmd_full", name="l"), e, IngestConfig())
        ingest(lake, DirSource(data_dir / "midi" / "miditok", name="m"), e, IngestConfig())
        first = curate(lake, e)
    n = first.analysed
    assert n > 20
    counts = (
        "SELECT (SELECT count(*) FROM piece_analysis_t), (SELECT count(*) FROM track_texture_t), "
        "(SELECT count(*) FROM track_signatures_t), (SELECT count(*) FROM chords)"
    )
    before = q(lake, counts)
    decided = _decided(lake)
    # what a lake curated by curate-v1 holds: no version-2 measures
    with lake.lock("downgrade"), lake.transaction({"command": "test downgrade"}) as tx:
        con = tx._con()
        con.execute(
            "UPDATE lake.store.piece_analysis SET curate_version = 'curate-v1', expressive = NULL, "
            "onset_metric_level = NULL, onset_grid_dev = NULL, expressive_rule = NULL, melody_track = NULL, role_rule = NULL"
        )
        con.execute(
            "UPDATE lake.store.track_texture SET role = NULL, role_confidence = NULL, expressive = NULL, "
            "onset_metric_level = NULL, onset_grid_dev = NULL"
        )
    assert q(lake, "SELECT count(*) FROM tracks WHERE role IS NULL")[0][0] == before[0][1]
    with lake.lock("t"), Engine(workers=1) as e:
        again = curate(lake, e)
    assert again.reanalysed == n and again.analysed == 0 and again.failed == 0
    assert again.stale_versions == {"curate-v1": n}
    line = again.line()
    assert f"{n} pieces analysed again" in line and "curate-v1" in line and CURATE_VERSION in line, line
    assert again.decision_current  # the measures changed, not the dedup inputs: nothing re-decided
    assert q(lake, counts) == before  # replaced, not appended
    assert _decided(lake) == decided
    assert q(lake, "SELECT count(DISTINCT piece_id), count(*) FROM piece_analysis_t")[0] == (before[0][0], before[0][0])
    assert (
        q(lake, f"SELECT count(*) FROM features WHERE curate_version <> '{CURATE_VERSION}' OR expressive_rule IS NULL")[
            0
        ][0]
        == 0
    )
    (missing,) = q(lake, "SELECT count(*) FROM tracks WHERE n_notes > 0 AND role IS NULL")[0]
    assert missing == 0
    # and the run after that finds nothing to do: no commit
    commits = len(lake.commits())
    with lake.lock("t"), Engine(workers=1) as e:
        third = curate(lake, e)
    assert third.reanalysed == third.analysed == third.to_analyse == 0 and third.decision_current
    assert third.line().startswith("nothing new")
    assert len(lake.commits()) == commits


def test_new_columns_in_views_and_snapshot_filters(curated: Lake) -> None:
    """The measures and decisions are queryable beside each other in ``tracks`` and ``features``."""
    rows = q(
        curated,
        "SELECT p.name, f.expressive, f.onset_metric_level FROM features f JOIN pieces p USING (piece_id) "
        "WHERE p.name LIKE 'Maestro_%' OR p.source = 'mutopia' ORDER BY 1",
    )
    assert len(rows) >= 40
    for name, decision, level in rows:
        assert decision == ("expressive" if name.startswith("Maestro_") else "quantized"), (name, decision, level)
    roles = dict(q(curated, "SELECT role, count(*) FROM tracks WHERE role IS NOT NULL GROUP BY 1"))
    assert set(roles) == {"melody", "bass", "chords", "drums", "other"}
    (drums,) = q(curated, "SELECT count(*) FROM tracks WHERE n_notes > 0 AND (role = 'drums') <> is_drum")[0]
    assert drums == 0
    (bad,) = q(
        curated,
        "SELECT count(*) FROM features f JOIN tracks t ON t.piece_id = f.piece_id AND t.track_index = f.melody_track "
        "WHERE t.role <> 'melody'",
    )[0]
    assert bad == 0


def test_a_decision_with_new_parameters_reads_no_index_vectors(curated: Lake, tmp_path: Path) -> None:
    """Nothing new to index (another song threshold): every piece is decided again from the stored
    pairs, and the faiss files (hundreds of MB on a Lakh-sized lake) are not read nor rewritten."""
    import shutil

    root = tmp_path / "lake"
    shutil.copytree(curated.root, root)
    lake = Lake(root)
    for name in ("neardup", "tracks"):
        (root / "index" / name / "index.faiss").write_bytes(b"not an index")
    with lake.lock("t"), Engine(workers=1) as e:
        s = curate(lake, e, song_threshold=0.8)
    assert s.scope == "full" and s.analysed == 0 and s.redecided == s.pieces
    assert [(root / "index" / n / "index.faiss").read_bytes() for n in ("neardup", "tracks")] == [b"not an index"] * 2
    assert not [p.name for p in (root / "index").iterdir() if p.name.startswith(".")]  # nothing staged is left


def test_a_lake_with_the_older_key_rule_gets_the_new_key(tmp_path: Path, data_dir: Path) -> None:
    """Pieces analysed by curate-v2 (default key rule evidence-v1) are analysed again: their key
    becomes the current rule's (``key_profile`` = KEY_METHOD), the music21 columns are recomputed."""
    from corpus.curate import CURATE_VERSION
    from corpus.curation.key_evidence import KEY_METHOD

    lake = Lake(tmp_path / "lake")
    with lake.lock("t"), Engine(workers=1) as e:
        ingest(lake, DirSource(data_dir / "midi" / "miditok", name="m"), e, IngestConfig())
        first = curate(lake, e)
    keys = "SELECT piece_id, key_tonic_pc, key_mode, key_profile FROM features WHERE key_mode IS NOT NULL ORDER BY 1"
    fresh = q(lake, keys)
    assert fresh and all(r[3] == KEY_METHOD for r in fresh)
    with lake.lock("downgrade"), lake.transaction({"command": "test downgrade"}) as tx:
        tx._con().execute(
            "UPDATE lake.store.piece_analysis SET curate_version = 'curate-v2', key_profile = 'evidence-v1', "
            "key_tonic_pc = (key_tonic_pc + 1) % 12 WHERE key_mode IS NOT NULL"
        )
    assert all(r[3] == "evidence-v1" for r in q(lake, keys))
    with lake.lock("t"), Engine(workers=1) as e:
        again = curate(lake, e)
    assert again.reanalysed == first.analysed and again.stale_versions == {"curate-v2": first.analysed}
    assert CURATE_VERSION != "curate-v2" and q(lake, keys) == fresh


def test_a_nightly_reads_new_keys_and_vectors_from_the_rows_inserted_since_the_index_was_saved(
    tmp_path: Path, data_dir: Path
) -> None:
    """The index records the lake version whose keys it holds; the next night's new keys are all in
    the rows inserted since, which give the same vectors as the whole table. Keys outside them, or a
    version expired by ``lake maintain``, fall back to the whole table."""
    import numpy as np

    from corpus.curate import _arrow_column, _fetch_vectors, _inserted_since, _new_keys_since_saved
    from corpus.curation import dedup, songs

    lake = Lake(tmp_path / "lake")
    full = "SELECT piece_id AS key, dedup_vector AS vector FROM piece_analysis_t"
    with lake.lock("t"), Engine(workers=1) as e:
        ingest(lake, DirSource(data_dir / "lakh" / "lmd_full", name="first"), e, IngestConfig())
        curate(lake, e)
        saved = json.loads((lake.root / "index" / "neardup" / "meta.json").read_text())["lake_version"]
        shutil.copytree(lake.root / "index" / "tracks", tmp_path / "tracks-first")
        ingest(lake, DirSource(data_dir / "lakh_derived", name="second"), e, IngestConfig())
        curate(lake, e)
    after = json.loads((lake.root / "index" / "neardup" / "meta.json").read_text())["lake_version"]
    assert after > saved
    con = lake.connect()
    try:
        new = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT piece_id FROM pieces WHERE source = 'second' AND status = 'ok' "
                "AND piece_id NOT IN (SELECT piece_id FROM pieces WHERE source = 'first') ORDER BY 1"
            ).fetchall()
        ]
        old = [
            r[0]
            for r in con.execute("SELECT DISTINCT piece_id FROM pieces WHERE source = 'first' ORDER BY 1").fetchall()
        ]
        assert len(new) > 10 and len(old) > 10
        now = con.execute("SELECT id FROM ducklake_current_snapshot('lake')").fetchone()[0]
        recent = _inserted_since("piece_analysis", "piece_id AS key, dedup_vector AS vector", "true", saved, now)
        # the premise: every new key once among the rows inserted since, no old key there
        got = {r[0] for r in con.execute(f"SELECT key FROM ({recent})").fetchall()}
        assert set(new) <= got and not (set(old) & got)
        whole = _fetch_vectors(con, full, new, dedup.VECTOR_DIM)
        assert whole.shape == (len(new), dedup.VECTOR_DIM) and np.abs(whole).sum() > 0
        assert np.array_equal(_fetch_vectors(con, full, new, dedup.VECTOR_DIM, recent), whole)
        mixed = new[:5] + old[:5]
        assert np.array_equal(
            _fetch_vectors(con, full, mixed, dedup.VECTOR_DIM, recent),
            _fetch_vectors(con, full, mixed, dedup.VECTOR_DIM),
        )
        # the new identity-track keys for the first night's index, found from the rows inserted since,
        # are those of every key it lacks, in the same order
        shutil.rmtree(lake.root / "index" / "tracks")
        shutil.copytree(tmp_path / "tracks-first", lake.root / "index" / "tracks")
        where = f"has_identity AND scheme = '{songs.TRACK_SCHEME}'"
        key = "piece_id || ':' || track_index"
        every = _arrow_column(con, f"SELECT {key} FROM track_signatures_t WHERE {where} ORDER BY piece_id, track_index")
        held = set(dedup.NearDupIndex.load(lake.root / "index" / "tracks", songs.TRACK_CONFIG).ids.to_pylist())
        lacking = [k for k in every.to_pylist() if k not in held]
        args = ("tracks", songs.TRACK_CONFIG, "track_signatures", key, "piece_id, track_index", where, now)
        found = _new_keys_since_saved(con, lake, *args)
        assert found is not None and len(lacking) > 10 and found.to_pylist() == lacking
    finally:
        con.close()
    with lake.lock("t"):
        lake.maintain(keep_days=0)
    con = lake.connect()
    try:
        assert np.array_equal(_fetch_vectors(con, full, new, dedup.VECTOR_DIM, recent), whole)
        assert _new_keys_since_saved(con, lake, *args) is None  # the version is expired: every key is read
    finally:
        con.close()


def test_pieces_analysed_by_a_curate_that_stopped_before_deciding_are_decided_by_the_next(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The undecided pieces are looked up among those analysed since the last decision; a curate that
    stops after the analysis leaves them, and the next one (a delta) decides them as one run would."""
    import corpus.curate as cur

    once, nightly = Lake(tmp_path / "once"), Lake(tmp_path / "nightly")
    first = DirSource(data_dir / "lakh" / "lmd_full", name="first")
    second = DirSource(data_dir / "lakh_derived", name="second")
    with Engine(workers=1) as e:
        with once.lock("t"):
            ingest(once, first, e, IngestConfig())
            ingest(once, second, e, IngestConfig())
            curate(once, e)
        with nightly.lock("t"):
            ingest(nightly, first, e, IngestConfig())
            curate(nightly, e)
            ingest(nightly, second, e, IngestConfig())

            def stop(*args: object, **kwargs: object) -> None:
                raise RuntimeError("stopped before deciding")

            with monkeypatch.context() as m:
                m.setattr(cur, "_recluster", stop)
                with pytest.raises(RuntimeError):
                    curate(nightly, e)
            con = nightly.connect()
            try:
                (base,) = con.execute(
                    "SELECT lake_version FROM curate_decisions ORDER BY decided_at DESC LIMIT 1"
                ).fetchone()
                undecided = cur._undecided(con, base)
                assert len(undecided) > 10 and undecided == set(cur._column(con, cur._UNDECIDED_SQL))
            finally:
                con.close()
            last = curate(nightly, e)
    assert last.scope == "delta" and _decided(nightly) == _decided(once)
