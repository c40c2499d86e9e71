"""Melody extraction: the melody track of a polyphonic piece becomes a derived piece.

A melody corpus can then be built from multitrack files, as Magenta's melody extraction does.
Which track: the one track of a curated *polyphonic* piece whose role is ``melody``
(``track_texture.role``, rule ``roles-v1`` of :mod:`corpus.curation.roles`: the single-line
track on top of the texture), when it is pitched, monophonic by ``texture.TEXTURE_RULE``
(``track_texture.texture = 'monophonic'``) and holds at least ``min_notes`` notes
(``MIN_MELODY_NOTES`` = 16 by default; shorter lines are fills, hits and pickups rather than
melodies). Bass lines, counter-melodies and other single-line tracks are not extracted (before
roles, every monophonic track was). Monophonic pieces are not split: they are melodies already.

What a derived piece holds (:func:`melody_midi`): one track with the parent track's notes
(times, durations, pitches, velocities unchanged, so it stays aligned with its parent), its
program and its name; the parent's ticks per quarter, tempo changes, time signatures and key
signatures. Controllers, pedals, pitch bends and lyrics are dropped (Magenta keeps notes only).
The bytes are a pure function of the parent's bytes and the track index (symusic writes
them deterministically), so the same parent always gives the same derived ``piece_id``.

Provenance: the derived piece is ingested with :func:`corpus.ingest.ingest` as a source item
``source = 'melody'``, ``source_uri = '<parent_piece_id>#track<index>'``, the parent's licence
and name (``'<parent name>#track<index>'``), and the columns ``parent_piece_id`` and
``parent_track`` (the ``track_index`` in ``tracks`` / ``track_texture``), so lineage is a join::

    SELECT m.piece_id, m.parent_piece_id, m.parent_track, t.program, t.name
    FROM pieces m JOIN tracks t ON t.piece_id = m.parent_piece_id AND t.track_index = m.parent_track
    WHERE m.source = 'melody'

Idempotent: tracks whose ``(source, uri)`` is already in ``pieces`` are not extracted again,
and ingest itself skips an item whose (source, uri, bytes) it has seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from corpus.curation import texture
from corpus.engine import prefetched

if TYPE_CHECKING:
    import symusic

    from corpus.engine import Engine
    from corpus.ingest import IngestConfig, IngestSummary
    from corpus.lake import Lake

SOURCE: Final = "melody"
MIN_MELODY_NOTES: Final = 16
BATCH_PIECES: Final = 16


def melody_uri(parent_piece_id: str, track_index: int) -> str:
    return f"{parent_piece_id}#track{int(track_index)}"


def melody_score(score: symusic.Score, track_index: int) -> symusic.Score:
    """A one-track score: track ``track_index`` of ``score`` with the score's tempo, metre and keys."""
    import symusic

    src = score.tracks[track_index]
    out = symusic.Score(score.tpq)
    out.tempos = score.tempos.copy()
    out.time_signatures = score.time_signatures.copy()
    out.key_signatures = score.key_signatures.copy()
    track = symusic.Track(name=src.name, program=src.program, is_drum=False)
    track.notes = src.notes.copy()
    out.tracks.append(track)
    return out


def melody_midi(score: symusic.Score, track_index: int) -> bytes:
    """The derived piece's MIDI bytes (see the module docstring); deterministic."""
    return bytes(melody_score(score, track_index).dumps_midi())


def extract_batch(batch: list[tuple[str, bytes, list[int]]], min_notes: int) -> list[tuple[str, Any]]:
    """Dask task: for each (parent_piece_id, parent bytes, candidate tracks), the melodies.

    Each candidate is checked again here (pitched, ``TEXTURE_RULE`` monophonic, >= ``min_notes``
    notes). Returns ``(parent_id, ("ok", [(track_index, bytes, track_name), ...], n_skipped))`` or
    ``(parent_id, ("error", message))``.
    """
    import symusic

    from corpus.parse import check_structure

    out: list[tuple[str, Any]] = []
    for pid, data, candidates in batch:
        try:
            smf, _ = check_structure(data)
            score = symusic.Score.from_midi(smf)
            melodies = []
            skipped = 0
            for idx in candidates:
                if not 0 <= idx < len(score.tracks):
                    skipped += 1
                    continue
                track = score.tracks[idx]
                notes = track.notes.numpy()
                if (
                    track.is_drum
                    or len(notes["time"]) < min_notes
                    or not texture.track_texture(notes, score.tpq)["is_monophonic"]
                ):
                    skipped += 1
                    continue
                melodies.append((idx, melody_midi(score, idx), track.name))
            out.append((pid, ("ok", melodies, skipped)))
        except Exception as exc:  # noqa: BLE001 - the parent parsed at ingest; reported, not fatal
            out.append((pid, ("error", f"{type(exc).__name__}: {exc}")))
    return out


def melody_candidates(lake: Lake, min_notes: int = MIN_MELODY_NOTES) -> list[tuple[str, list[int]]]:
    """(parent piece, its track indices) still to extract: curated polyphonic pieces' melody-role
    track when it is monophonic, pitched, has >= ``min_notes`` notes and no ``melody`` provenance row yet."""
    con = lake.connect()
    try:
        rows = con.execute(
            f"""
            SELECT a.piece_id, list(tt.track_index ORDER BY tt.track_index)
            FROM piece_analysis_t a
            JOIN track_texture_t tt USING (piece_id)
            JOIN tracks_t t USING (piece_id, track_index)
            WHERE a.texture = 'polyphonic' AND tt.role = 'melody' AND tt.texture = 'monophonic' AND NOT t.is_drum
              AND t.n_notes >= ?
              AND (a.piece_id || '#track' || CAST(tt.track_index AS VARCHAR)) NOT IN
                  (SELECT source_uri FROM pieces_t WHERE source = '{SOURCE}' AND source_uri IS NOT NULL)
            GROUP BY a.piece_id ORDER BY a.piece_id
            """,
            [int(min_notes)],
        ).fetchall()
    finally:
        con.close()
    return [(str(pid), [int(i) for i in idx]) for pid, idx in rows]


def _parent_provenance(lake: Lake, piece_ids: set[str]) -> dict[str, tuple[str, str | None]]:
    """piece_id -> (name, licence) of its original provenance row (the first non-duplicate)."""
    if not piece_ids:
        return {}
    con = lake.connect()
    try:
        rows = con.execute(
            "SELECT piece_id, name, license FROM pieces_t WHERE status = 'ok' AND piece_id IS NOT NULL "
            "ORDER BY piece_id, is_duplicate, ingested_at, source, source_uri"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, tuple[str, str | None]] = {}
    for pid, name, lic in rows:
        if pid in piece_ids and pid not in out:
            out[pid] = (name or pid, lic)
    return out


def extract_melodies(
    lake: Lake,
    engine: Engine,
    *,
    min_notes: int = MIN_MELODY_NOTES,
    config: IngestConfig | None = None,
    batch_pieces: int = BATCH_PIECES,
) -> tuple[IngestSummary, dict[str, int]]:
    """Extract and ingest the melodies of curated polyphonic pieces (the caller holds the lock).

    Returns the ingest summary of the derived items and counts: ``parents`` (pieces looked at),
    ``candidates`` (tracks), ``skipped`` (tracks that failed the re-check), ``errors`` (parents
    that could not be read again). The derived pieces are not curated here: :func:`corpus.curate.curate`
    with ``extract_melodies=True`` analyses them right after.
    """
    from corpus.ingest import ingest
    from corpus.sources.base import SourceItem

    if isinstance(min_notes, bool) or not isinstance(min_notes, int) or min_notes < 1:
        raise ValueError(f"min_notes must be a positive integer, got {min_notes!r}")
    todo = melody_candidates(lake, min_notes)
    prov = _parent_provenance(lake, {pid for pid, _ in todo})
    counts = {"parents": len(todo), "candidates": sum(len(t) for _, t in todo), "skipped": 0, "errors": 0}

    def fetch(chunk: list[tuple[str, list[int]]]) -> list[tuple[str, bytes, list[int]]]:
        raws = lake.get_raws([pid for pid, _ in chunk])
        return [(pid, raw, idx) for (pid, idx), raw in zip(chunk, raws)]

    def batches() -> Iterator[list[tuple[str, bytes, list[int]]]]:
        chunks = (todo[i : i + batch_pieces] for i in range(0, len(todo), batch_pieces))
        return prefetched(chunks, fetch) if lake.remote else map(fetch, chunks)

    def items() -> Iterator[SourceItem]:
        for _, results in engine.map_unordered(extract_batch, batches(), min_notes):
            for pid, res in sorted(results):
                if res[0] != "ok":
                    counts["errors"] += 1
                    continue
                counts["skipped"] += res[2]
                name, lic = prov.get(pid, (pid, None))
                for idx, data, _track_name in res[1]:
                    uri = melody_uri(pid, idx)
                    yield SourceItem(
                        source=SOURCE,
                        uri=uri,
                        data=data,
                        name=f"{name}#track{idx}",
                        license=lic,
                        meta={"parent_piece_id": pid, "parent_track": int(idx)},
                    )

    summary = ingest(lake, items(), engine, config, command="curate --extract-melodies")
    return summary, counts
