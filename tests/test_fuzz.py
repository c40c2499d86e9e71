"""Fuzzing the parse stage with mutated real MIDI files.

A seeded mutator (no hypothesis needed: mutant ``i`` of seed ``s`` is a pure function of
``(s, i)`` and the fixtures, so any failure reproduces with :func:`mutant`) makes variants
of the real files in ``../shared/data``: bit flips, overwritten and inserted bytes,
truncations, chunks spliced from other files, huge delta times, absurd track counts, bogus
chunk and header lengths, thousands of tracks, notes that never end. Every variant must
come out of :func:`corpus.parse.analyse` as a result or a :class:`corpus.parse.Reject`
with a code from :data:`corpus.reasons.REASONS`, in well under the per-file time limit;
any other exception is a bug in the parse stage. A smaller batch goes through the real
path (sandboxed parser children under Dask, into a lake) and is checked for accounting.

Reproduce one failure::

    python -c "from tests.test_fuzz import mutant; open('/tmp/m.mid','wb').write(mutant(SEED, I)[0])"
"""

from __future__ import annotations

import functools
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from corpus.reasons import REASONS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEED = 20240601
N_INPROCESS = 2400
N_SANDBOX = 300
MAX_FIXTURE_BYTES = 48 << 10  # small files keep 2,400 parses to a few seconds
PER_FILE_LIMIT_S = 5.0  # the sandbox limit is 20 s; in-process nothing may come near it


@functools.cache
def fixtures() -> tuple[tuple[str, bytes], ...]:
    """Real files (any outcome: corrupt ones mutate into other defects), smallest-first cap."""
    if not DATA.is_dir():
        return ()
    out = []
    for p in sorted(DATA.rglob("*")):
        if (
            p.is_file()
            and p.suffix.lower() in (".mid", ".midi", ".kar", ".rmi")
            and 0 < p.stat().st_size <= MAX_FIXTURE_BYTES
        ):
            out.append((str(p.relative_to(DATA)), p.read_bytes()))
    return tuple(out)


def _chunks(d: bytes) -> list[tuple[int, int]]:
    """(offset of chunk header, declared length) of each chunk walkable from the start."""
    out = []
    pos = 8 + struct.unpack(">I", d[4:8])[0] if len(d) >= 14 and d[:4] == b"MThd" else len(d)
    while pos + 8 <= len(d) and len(out) < 4096:
        (n,) = struct.unpack(">I", d[pos + 4 : pos + 8])
        out.append((pos, n))
        pos += 8 + n
    return out


def _set_len(d: bytearray, at: int, n: int) -> None:
    d[at + 4 : at + 8] = struct.pack(">I", n & 0xFFFFFFFF)


def _vlq(v: int) -> bytes:
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    return bytes(reversed(out))


def _insert_in_track(d: bytearray, rng: np.random.Generator, event: bytes) -> str:
    """Insert ``event`` (delta + event bytes) at the start of a random MTrk, fixing its length."""
    tracks = [(at, n) for at, n in _chunks(bytes(d)) if d[at : at + 4] == b"MTrk"]
    if not tracks:
        return "no track"
    at, n = tracks[int(rng.integers(len(tracks)))]
    d[at + 8 : at + 8] = event
    _set_len(d, at, n + len(event))
    return f"track at {at}"


def _mutate(d: bytearray, rng: np.random.Generator, other: bytes) -> str:
    """Apply one mutation in place; return what it did."""
    kind = int(rng.integers(14))
    n = len(d)
    if kind == 0 and n:  # bit flips
        k = int(rng.integers(1, 9))
        pos = rng.integers(0, n, k)
        for p in pos:
            d[int(p)] ^= 1 << int(rng.integers(8))
        return f"flip {k} bits at {sorted(int(p) for p in pos)}"
    if kind == 1 and n:  # overwrite a run with random bytes
        p, k = int(rng.integers(n)), int(rng.integers(1, 33))
        d[p : p + k] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        return f"overwrite {k} bytes at {p}"
    if kind == 2:  # truncate
        p = int(rng.integers(0, n + 1))
        del d[p:]
        return f"truncate at {p}"
    if kind == 3 and other:  # splice a run of another file in (replacing or inserting)
        a = int(rng.integers(len(other)))
        b = min(len(other), a + int(rng.integers(1, 2048)))
        p = int(rng.integers(0, n + 1))
        if rng.random() < 0.5:
            d[p : p + (b - a)] = other[a:b]
            return f"splice other[{a}:{b}] over {p}"
        d[p:p] = other[a:b]
        return f"insert other[{a}:{b}] at {p}"
    if kind == 4 and other:  # append a whole chunk of another file (MTrk or garbage)
        ch = _chunks(other)
        if ch:
            at, ln = ch[int(rng.integers(len(ch)))]
            d.extend(other[at : at + 8 + ln])
            return f"append other chunk at {at}"
    if kind == 5:  # huge delta time before an event
        delta = int(rng.choice([0x0FFFFFFF, 0x0FFFFFFE, 1 << 27, 10_000_000]))
        ev = _vlq(delta) + bytes([0x90 | int(rng.integers(16)), int(rng.integers(128)), 64])
        ev += _vlq(int(rng.integers(0, 0x0FFFFFFF))) + bytes([0x80 | (ev[-3] & 0x0F), ev[-2], 0])
        return "huge delta, " + _insert_in_track(d, rng, ev)
    if kind == 6 and n >= 14:  # absurd track count in the header
        v = int(rng.choice([0, 1, 2, 255, 1024, 1025, 65535]))
        d[10:12] = struct.pack(">H", v)
        return f"ntracks = {v}"
    if kind == 7:  # bogus chunk length
        ch = _chunks(bytes(d))
        if ch:
            at, ln = ch[int(rng.integers(len(ch)))]
            v = int(rng.choice([0, 1, ln - 1, ln + 1, ln + 4096, 0x7FFFFFFF, 0xFFFFFFFF, int(rng.integers(1 << 32))]))
            _set_len(d, at, v)
            return f"chunk at {at} length {ln} -> {v & 0xFFFFFFFF}"
    if kind == 8 and n >= 14:  # header: length, format, division
        field = int(rng.integers(3))
        if field == 0:
            v = int(rng.choice([0, 5, 7, 100, 0xFFFFFFFF]))
            d[4:8] = struct.pack(">I", v)
            return f"MThd length = {v}"
        if field == 1:
            v = int(rng.choice([0, 1, 2, 3, 0xFFFF]))
            d[8:10] = struct.pack(">H", v)
            return f"format = {v}"
        v = int(rng.choice([1, 2, 3, 0x7FFF, 0x8000, 0xE250, int(rng.integers(1 << 16))]))
        d[12:14] = struct.pack(">H", v)
        return f"division = {v}"
    if kind == 9:  # many copies of one track (up to past MAX_TRACKS)
        tracks = [(at, ln) for at, ln in _chunks(bytes(d)) if d[at : at + 4] == b"MTrk"]
        if tracks:
            at, ln = min(tracks, key=lambda t: t[1])
            k = int(rng.choice([50, 1023, 1030, 3000]))
            body = bytes(d[at : at + 8 + ln])
            if len(body) * k <= 8 << 20:
                d.extend(body * k)
                if rng.random() < 0.5 and n >= 14:
                    d[10:12] = struct.pack(">H", min(65535, len(tracks) + k))
                return f"{k} copies of track at {at}"
    if kind == 10:  # notes that never end, many of them at one tick
        k = int(rng.choice([10, 1000, 20000]))
        ev = b"".join(b"\x00\x90" + bytes([p % 128, 100]) for p in range(k))
        return f"{k} hanging notes, " + _insert_in_track(d, rng, ev)
    if kind == 11:  # meta / sysex with absurd lengths
        mtype = int(rng.choice([0x01, 0x03, 0x2F, 0x51, 0x58, 0x59, 0x7F]))
        ln = int(rng.choice([0, 1, 2, 3, 0x0FFFFFFF]))
        body = b"\x00\xff" + bytes([mtype]) + _vlq(ln) + bytes(min(ln, 4))
        if rng.random() < 0.3:
            body = b"\x00\xf0" + _vlq(ln) + bytes(min(ln, 4))
        return f"meta 0x{mtype:02x} len {ln}, " + _insert_in_track(d, rng, body)
    if kind == 12 and n:  # delete or duplicate a range
        a = int(rng.integers(n))
        b = min(n, a + int(rng.integers(1, 512)))
        if rng.random() < 0.5:
            del d[a:b]
            return f"delete [{a}:{b}]"
        d[b:b] = d[a:b]
        return f"duplicate [{a}:{b}]"
    # RIFF wrap, sometimes with a bad size
    size = len(d) + int(rng.choice([0, 0, 7, -3, 1 << 30]))
    body = b"RMID" + b"data" + struct.pack("<I", size & 0xFFFFFFFF) + bytes(d)
    d[:] = b"RIFF" + struct.pack("<I", len(body)) + body
    return f"RIFF wrap, data size {size}"


def mutant(seed: int, i: int) -> tuple[bytes, str]:
    """Mutant ``i`` of ``seed``: its bytes and a description (source file and mutations)."""
    fx = fixtures()
    if not fx:
        raise FileNotFoundError(f"real test data not found at {DATA}")
    rng = np.random.default_rng([seed, i])
    name, data = fx[int(rng.integers(len(fx)))]
    other = fx[int(rng.integers(len(fx)))][1]
    d = bytearray(data)
    steps = [_mutate(d, rng, other) for _ in range(int(rng.choice([1, 1, 1, 2, 3])))]
    return bytes(d), f"{name}: " + "; ".join(steps)


@pytest.fixture(scope="module")
def fuzz_fixtures() -> tuple[tuple[str, bytes], ...]:
    fx = fixtures()
    if not fx:
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    return fx


def test_mutator_is_deterministic(fuzz_fixtures: tuple) -> None:
    assert [mutant(SEED, i) for i in range(50)] == [mutant(SEED, i) for i in range(50)]
    assert len({mutant(SEED, i)[0] for i in range(200)}) > 150  # mostly distinct variants


@pytest.mark.timeout(240)
def test_parse_survives_mutants(fuzz_fixtures: tuple) -> None:
    """2,400 mutants in process: a result or a Reject with a known code, nothing else, fast."""
    from corpus.parse import Reject, analyse

    outcomes: Counter[str] = Counter()
    bugs: list[str] = []
    slow: list[str] = []
    for i in range(N_INPROCESS):
        data, what = mutant(SEED, i)
        policy = "strict" if i % 4 == 3 else "lenient"
        t0 = time.perf_counter()
        try:
            res = analyse(data, policy)
        except Reject as rej:
            if rej.reason not in REASONS:
                bugs.append(f"mutant({SEED}, {i}) [{what}] unknown reason {rej.reason!r}")
            outcomes[rej.reason] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test: anything else is a bug
            bugs.append(f"mutant({SEED}, {i}) [{what}] policy={policy}: {type(exc).__name__}: {exc}")
        else:
            if res["facts"]["n_notes"] <= 0 or len(res["tracks"]) == 0:
                bugs.append(f"mutant({SEED}, {i}) [{what}] ok without notes: {res['facts']}")
            outcomes["ok"] += 1
        spent = time.perf_counter() - t0
        if spent > PER_FILE_LIMIT_S:
            slow.append(f"mutant({SEED}, {i}) [{what}] took {spent:.1f} s")
    assert not bugs, f"{len(bugs)} mutants broke analyse (reproduce with tests.test_fuzz.mutant):\n" + "\n".join(
        bugs[:20]
    )
    assert not slow, "\n".join(slow[:20])
    # the mutator reaches many distinct defects, and some mutants still parse
    assert outcomes["ok"] > 100 and len(outcomes) >= 10, outcomes


@pytest.mark.timeout(300)
def test_ingest_survives_mutants(fuzz_fixtures: tuple, tmp_path: Path) -> None:
    """300 mutants through the sandboxed parser under Dask, into a lake: accounting holds."""
    from corpus.engine import Engine
    from corpus.ingest import IngestConfig, ingest
    from corpus.lake import Lake
    from corpus.sources.base import SourceItem

    items = []
    for i in range(N_INPROCESS, N_INPROCESS + N_SANDBOX):
        data, what = mutant(SEED, i)
        items.append(SourceItem(source="fuzz", uri=f"mutant-{SEED}-{i}.mid", data=data, name=what[:200]))
    lake = Lake(tmp_path / "lake")
    with lake.lock("fuzz"), Engine(workers=2) as engine:
        s = ingest(lake, items, engine, IngestConfig(timeout_s=10.0))
    assert s.inputs == len(items) == s.ok + s.rejected + s.duplicate
    assert set(s.reasons) <= set(REASONS), set(s.reasons) - set(REASONS)
    # the sandbox never needed its last resort on these: a crash or a timeout is a parser bug
    assert not {"parser_crash", "parse_timeout", "parse_memory"} & set(s.reasons), s.reasons
    con = lake.connect()
    try:
        (rows,) = con.execute("SELECT count(*) FROM pieces").fetchone()
        bad = con.execute("SELECT DISTINCT reason FROM rejects").fetchall()
        (nrej,) = con.execute("SELECT count(*) FROM rejects").fetchone()
        (first_rej,) = con.execute(
            "SELECT count(*) FROM pieces WHERE status = 'rejected' AND NOT is_duplicate"
        ).fetchone()
        (all_rej,) = con.execute("SELECT count(*) FROM pieces WHERE status = 'rejected'").fetchone()
    finally:
        con.close()
    assert rows == s.inputs
    assert nrej == first_rej and all_rej == s.rejected  # a mutant equal to a rejected one is rejected, not a duplicate
    assert {r for (r,) in bad} <= set(REASONS)


ZERO_TEMPO = bytes.fromhex(
    "4d546864000000060000000101e0"  # MThd: format 0, 1 track, 480 tpq
    "4d54726b00000014"  # MTrk of 20 bytes
    "00ff510300000000"  # Set Tempo 0 microseconds per quarter (found by the fuzzer)
    "903c408360803c00"  # C4 for a quarter
    "00ff2f00"
)


def test_zero_tempo_is_rejected_or_kept_not_a_crash() -> None:
    """Minimal reproducer of the fuzzer's first find: a Set Tempo of 0 (or of 2 bytes)."""
    from corpus.parse import Reject, analyse

    try:
        analyse(ZERO_TEMPO)
    except Reject as rej:
        assert rej.reason in REASONS


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_parse_survives_many_mutants(fuzz_fixtures: tuple) -> None:
    """30,000 mutants of another seed (about a minute): the same contract as above."""
    from corpus.parse import Reject, analyse

    bugs = []
    for i in range(30_000):
        data, what = mutant(SEED + 1, i)
        try:
            analyse(data, "strict" if i % 4 == 3 else "lenient")
        except Reject as rej:
            if rej.reason not in REASONS:
                bugs.append(f"mutant({SEED + 1}, {i}) [{what}] unknown reason {rej.reason!r}")
        except Exception as exc:  # noqa: BLE001 - anything else is a bug
            bugs.append(f"mutant({SEED + 1}, {i}) [{what}]: {type(exc).__name__}: {exc}")
    assert not bugs, f"{len(bugs)} mutants broke analyse:\n" + "\n".join(bugs[:20])
