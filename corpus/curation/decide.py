"""Dedup clusters and song groups over integer codes: the decision of ``curate`` without a Python
object per pair.

A lake of N pieces holds millions of stored pairs (track matches, near-duplicate vectors); as
tuples and dicts they cost gigabytes in the driver. Here a pair is a row of NumPy arrays of piece
codes (positions in the sorted piece ids) and the union-find is
``scipy.sparse.csgraph.connected_components``. The rules are those of
:func:`corpus.curation.dedup.cluster`, the Lakh md5 merge of curate (clusters of one md5 join,
the representative with most notes stays) and :func:`corpus.curation.songs.group_songs`
(union-find there, components here: the same sets; names, representatives and ``joined_by``
never depended on the order of the unions). tests/curation/test_decide.py compares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from corpus.curation import songs
from corpus.curation.dedup import EMPTY_CONTENT_HASH, EMPTY_TRANSPOSED_HASH


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The connected component of each of ``n`` nodes joined by the edges ``a[i] - b[i]`` (labels)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _hash_edges(keys: Sequence[str | None], empty: str) -> tuple[np.ndarray, np.ndarray]:
    """Edges from the first piece holding each key (not None, not ``empty``) to every other holder."""
    codes = np.full(len(keys), -1, np.int64)
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k is not None and k != empty:
            codes[i] = seen.setdefault(k, i)
    other = np.nonzero((codes >= 0) & (codes != np.arange(len(keys))))[0]
    return codes[other], other


def _first_by(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """For each label, the first node of ``order`` carrying it; indexed by node: its label's pick."""
    pick = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, np.int64)
    lab = labels[order]
    first = np.unique(lab, return_index=True)[1]
    pick[lab[first]] = order[first]
    return pick[labels]


def best_pairs(
    a: np.ndarray, b: np.ndarray, score: np.ndarray, second: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One row per (a, b): the largest ``(score, second)`` (lexicographic), as the decision's dicts kept it."""
    if not len(a):
        return a, b, score, second
    keys = (score,) if second is None else (second, score)
    order = np.lexsort((*keys, b, a))
    a, b, score = a[order], b[order], score[order]
    second = None if second is None else second[order]
    last = np.ones(len(a), bool)
    last[:-1] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[last], b[last], score[last], (None if second is None else second[last])


def cluster_codes(
    hashes: Sequence[str | None],
    t_hashes: Sequence[str | None],
    n_notes: np.ndarray,
    lengths: np.ndarray,
    near_a: np.ndarray,
    near_b: np.ndarray,
    near_score: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, int]:
    """:func:`corpus.curation.dedup.cluster` over codes 0..n-1 (ids sorted): the representative code
    of each piece and the number of duplicate pairs. ``near_*``: one row per unordered pair (its best
    score); those at or above ``threshold`` join and count."""
    n = len(hashes)
    ca, cb = _hash_edges(hashes, EMPTY_CONTENT_HASH)
    ta, tb = _hash_edges(t_hashes, EMPTY_TRANSPOSED_HASH)
    ok = near_score >= threshold
    a = np.concatenate([ca, ta, near_a[ok]])
    b = np.concatenate([cb, tb, near_b[ok]])
    labels = components(n, a, b)
    n_hash = n - len(np.unique(components(n, np.concatenate([ca, ta]), np.concatenate([cb, tb])))) if n else 0
    # representative: most notes, then longest, then the smallest id (codes follow the sorted ids)
    order = np.lexsort((np.arange(n), -lengths, -n_notes))
    return _first_by(labels, order), n_hash + int(ok.sum())


def merge_codes(rep: np.ndarray, n_notes: np.ndarray, groups: Iterable[Sequence[int]]) -> np.ndarray:
    """Lakh md5 groups over codes: clusters holding members of one group join;
    the representative is the joined clusters' representative with most notes, then the smallest id."""
    n = len(rep)
    a: list[int] = []
    b: list[int] = []
    for g in groups:
        a += [g[0]] * (len(g) - 1)
        b += list(g[1:])
    if not a:
        return rep
    idx = np.arange(n)
    labels = components(
        n, np.concatenate([idx, np.asarray(a, np.int64)]), np.concatenate([rep, np.asarray(b, np.int64)])
    )
    cand = np.nonzero(rep == idx)[0]  # the representatives, best first
    cand = cand[np.lexsort((cand, -n_notes[cand]))]
    pick = np.full(int(labels.max()) + 1, -1, np.int64)
    lab = labels[cand]
    first = np.unique(lab, return_index=True)[1]
    pick[lab[first]] = cand[first]
    return pick[labels]


def song_group_codes(
    ids: Sequence[str],
    links: Sequence[tuple[np.ndarray, np.ndarray, str]],
    keys: dict[int, list[str]],
) -> tuple[list[str], list[str]]:
    """:func:`corpus.curation.songs.group_songs` over codes: ``links`` are (a codes, b codes, kind);
    ``keys`` maps a code to its external keys (``msd:...``, ``mutopia:...``). The group id and
    ``joined_by`` of each piece, in code order."""
    n = len(ids)
    strength = {kind: s for s, kind in enumerate(songs.JOIN_KINDS)}
    joined = np.full(n, 99, np.int64)
    all_a: list[np.ndarray] = []
    all_b: list[np.ndarray] = []

    def add(a: np.ndarray, b: np.ndarray, kind: str) -> None:
        keep = a != b
        a, b = a[keep], b[keep]
        all_a.append(a)
        all_b.append(b)
        s = strength.get(kind, 99)
        np.minimum.at(joined, a, s)
        np.minimum.at(joined, b, s)

    for a, b, kind in links:
        add(np.asarray(a, np.int64), np.asarray(b, np.int64), kind)
    first_with: dict[str, int] = {}
    ka: dict[str, list[int]] = {}
    kb: dict[str, list[int]] = {}
    for p in sorted(keys):
        for key in keys[p]:
            other = first_with.setdefault(key, p)
            if other != p:
                kind = key.split(":", 1)[0]
                ka.setdefault(kind, []).append(p)
                kb.setdefault(kind, []).append(other)
    for kind in ka:
        add(np.asarray(ka[kind], np.int64), np.asarray(kb[kind], np.int64), kind)
    labels = components(
        n,
        np.concatenate(all_a) if all_a else np.zeros(0, np.int64),
        np.concatenate(all_b) if all_b else np.zeros(0, np.int64),
    )

    def rank(key: str) -> tuple[int, str]:
        return ({"msd": 0, "mutopia": 1}.get(key.split(":", 1)[0], 2), key)

    # a group's name: its best external key, else its smallest piece id (codes follow the sorted ids)
    first = _first_by(labels, np.arange(n))
    name: dict[int, str] = {}
    for p, ks in keys.items():
        if ks:
            best = min(ks, key=rank)
            lab = int(labels[p])
            if lab not in name or rank(best) < rank(name[lab]):
                name[lab] = best
    kinds = [*songs.JOIN_KINDS]
    group = [songs._group_id(name[int(labels[i])]) if int(labels[i]) in name else ids[int(first[i])] for i in range(n)]
    joined_by = [kinds[j] if j < len(kinds) else "self" for j in joined.tolist()]
    return group, joined_by
