"""The curate decision over integer codes (corpus/curation/decide.py) decides what the per-pair
Python implementations decide: :func:`dedup.cluster` on the real files, and
:func:`songs.group_songs` and the Lakh md5 merge on graphs with many components, shared keys,
ties in the representative rule and self-links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curation import decide, dedup, songs
from corpus.curation.dedup import NearDupIndex
from tests.conftest import midi_files


def test_clusters_of_real_files_are_those_of_dedup_cluster(data_dir: Path) -> None:
    files = midi_files(data_dir / "midi")[:80]
    sigs, notes, lengths = [], [], []
    for f in files:
        score = symusic.Score(f)
        sigs.append(dedup.signature(score))
        notes.append(sum(len(t.notes) for t in score.tracks))
        lengths.append(float(score.end()) / max(1, score.ticks_per_quarter))
    # the copies among the fixtures (fur_elise_2 and others) are joined by hash and by vector
    # ids sorted (codes follow the sorted ids); copies share a hash, so ids carry the file number
    order = sorted(range(len(files)), key=lambda i: f"{sigs[i].content_hash}-{i:03d}")
    ids = [f"{sigs[i].content_hash}-{i:03d}" for i in order]
    hashes = [sigs[i].content_hash for i in order]
    t_hashes = [sigs[i].content_hash_transposed for i in order]
    vecs = np.stack([sigs[i].vector for i in order]).astype(np.float32)
    n_notes = [notes[i] for i in order]
    lens = [lengths[i] for i in order]
    pairs = NearDupIndex.build(ids, vecs).pairs(0.5)
    for threshold in (0.5, 0.7, 0.9):
        ref = dedup.cluster(
            ids,
            None,
            hashes,
            transposed_hashes=t_hashes,
            threshold=threshold,
            n_notes=n_notes,
            lengths=lens,
            near_pairs=pairs,
        )
        a = np.asarray([p[0] for p in pairs], np.int64)
        b = np.asarray([p[1] for p in pairs], np.int64)
        s = np.asarray([p[2] for p in pairs], np.float64)
        rep, n_pairs = decide.cluster_codes(hashes, t_hashes, np.asarray(n_notes), np.asarray(lens), a, b, s, threshold)
        assert {ids[i]: ids[r] for i, r in enumerate(rep.tolist())} == ref.cluster_of
        assert n_pairs == len(ref.pairs)
    assert len(set(ref.cluster_of.values())) < len(ids)  # the fixtures hold duplicates: the test can fail


def _merge_reference(
    ids: list[str], cluster_of: dict[str, str], groups: list[list[str]], notes: dict[str, int]
) -> dict[str, str]:
    """The md5 merge as curate wrote it with dicts: union-find over clusters, best (-notes, id) root."""
    parent = {c: c for c in set(cluster_of.values())}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in groups:
        roots = sorted({find(cluster_of[p]) for p in group}, key=lambda r: (-notes[r], r))
        for r in roots[1:]:
            parent[r] = roots[0]
    return {pid: find(c) for pid, c in cluster_of.items()}


@pytest.mark.parametrize("seed", range(6))
def test_song_groups_and_md5_merge_match_the_union_find(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    ids = sorted({f"{x:016x}" for x in rng.integers(0, 2**62, n)})
    n = len(ids)
    notes = rng.integers(1, 6, n)  # few values: many ties, decided by the id
    # clusters: each piece points at a random member of a small block; the rep of a block is its best
    block = rng.integers(0, max(1, n // 3), n)
    rep = np.arange(n)
    for blk in np.unique(block):
        members = np.nonzero(block == blk)[0]
        rep[members] = min(members, key=lambda i: (-notes[i], i))
    groups = [sorted(rng.choice(n, int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(n // 10)]
    merged = decide.merge_codes(rep, notes, groups)
    cluster_of = {ids[i]: ids[r] for i, r in enumerate(rep.tolist())}
    want = _merge_reference(ids, cluster_of, [[ids[i] for i in g] for g in groups], dict(zip(ids, notes.tolist())))
    assert {ids[i]: ids[r] for i, r in enumerate(merged.tolist())} == want

    kinds = ["dedup", "melody", "lmd_md5", "lineage"]
    links = []
    for kind in kinds:
        m = int(rng.integers(0, n))
        links.append((rng.integers(0, n, m), rng.integers(0, n, m), kind))  # self-links included
    keys: dict[int, list[str]] = {}
    for i in rng.choice(n, n // 4, replace=False).tolist():
        keys[i] = [f"{'msd' if rng.random() < 0.5 else 'mutopia'}:K{int(rng.integers(0, 8))}"]
    group, joined = decide.song_group_codes(ids, links, keys)
    ref = songs.group_songs(
        ids,
        [(ids[x], ids[y], kind) for a, b, kind in links for x, y in zip(a.tolist(), b.tolist(), strict=True)],
        {ids[i]: ks for i, ks in keys.items()},
    )
    assert dict(zip(ids, group, strict=True)) == ref.group_of
    assert dict(zip(ids, joined, strict=True)) == ref.joined_by
    assert 1 < ref.n_groups < n  # joined and unjoined pieces: the test can fail


def test_best_pairs_keeps_the_largest_score_then_second_key() -> None:
    a = np.asarray([0, 0, 0, 1, 1])
    b = np.asarray([1, 1, 1, 2, 2])
    cont = np.asarray([0.5, 0.7, 0.7, 0.2, 0.1])
    shared = np.asarray([90, 10, 20, 5, 50])
    ra, rb, rc, rs = decide.best_pairs(a, b, cont, shared)
    assert ra.tolist() == [0, 1] and rb.tolist() == [1, 2]
    assert rc.tolist() == [0.7, 0.2] and rs is not None and rs.tolist() == [20, 5]
