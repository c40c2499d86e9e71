"""The tokenize stage: curated pieces to token ids under several schemes, in the engine.

For each scheme the tokenizer is registered once (``tokenizers`` table and
``tokenizers/<hash>/tokenizer.json`` in miditok's format); its hash covers the whole
config, the library versions and our transform, so a changed parameter writes a new
partition ``tokens/scheme=<s>/tokenizer_hash=<h>/`` and never touches an old one.

Only the (piece, scheme, hash, transposition) combinations that have neither tokens nor a
reject are done, so a second run does nothing. A piece a scheme cannot represent whole is a
``rejects`` row (stage ``tokenize``) with the scheme, hash and transposition; nothing is cut
or dropped silently (miditok's "cannot tokenize entirely" warning is a reject).

Workers get the tokenizer as text and rebuild it once per process; REMI, TSD, MIDILike and
Structured with a supported config go through :mod:`corpus.tokenize.fastpath` (same ids,
15-24x faster). A trained vocabulary's subword encode runs once per batch, batched.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corpus.engine import Engine, prefetched
from corpus.lake import Lake, new_txid, now_utc
from corpus.tokenize import presets, roundtrip

TransposeMode = str  # "none" | "normalize" | "augment:K"
DEFAULT_MIN_KEY_CONFIDENCE = 0.02


class TokenizeError(ValueError):
    """Bad user input (unknown scheme, malformed --transpose)."""


@dataclass
class SchemeSummary:
    scheme: str
    tokenizer_hash: str
    pieces: int = 0
    tokens: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0
    todo: int = 0  # pieces x transpositions to tokenize in this run (a progress total)


@dataclass
class TokenizeSummary:
    schemes: list[SchemeSummary] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return sum(s.pieces + s.rejected for s in self.schemes)

    @property
    def total(self) -> int:
        return sum(s.todo for s in self.schemes)

    def lines(self) -> list[str]:
        out = []
        for s in self.schemes:
            line = f"{s.scheme} [{s.tokenizer_hash}]: {s.pieces} tokenized ({s.tokens:,} tokens), {s.rejected} rejected"
            if s.reasons:
                line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items())) + ")"
            line += f", {s.skipped_existing} already there"
            out.append(line)
        if self.done == 0:
            out.append("nothing to do: every combination is already tokenized")
        return out


def parse_transpose(mode: str) -> tuple[str, int]:
    if mode in ("none", "normalize"):
        return mode, 0
    if mode.startswith("augment:"):
        try:
            k = int(mode.split(":", 1)[1])
        except ValueError:
            k = -1
        if 1 <= k <= 12:
            return "augment", k
    raise TokenizeError(f"--transpose must be none, normalize or augment:K with K in 1..12, got {mode!r}")


@dataclass(frozen=True)
class Registered:
    scheme: str
    text: str  # tokenizer_json
    hash: str
    tokenizer: Any
    transform: dict[str, Any] | None


def register(lake: Lake, scheme: str, config_file: str | None = None) -> Registered:
    """Build the scheme's tokenizer, store it in the lake once (lake locked by the caller)."""
    from importlib.metadata import version

    if config_file:
        tok, transform = presets.from_json(config_file), None
    elif scheme in presets.PRESETS:
        tok, transform = presets.build(scheme)
    else:  # a tokenizer registered earlier under this name (e.g. one trained with BPE)
        _, rel = registered_tokenizer(lake, scheme)
        tok, transform = presets.load_from_text(lake.read_bytes(rel).decode())
    text = presets.tokenizer_json(tok, transform)
    h = presets.tokenizer_hash(text)
    rel = f"tokenizers/{h}/tokenizer.json"
    con = lake.connect()
    try:
        known = con.execute("SELECT 1 FROM tokenizers WHERE tokenizer_hash = ? AND scheme = ?", [h, scheme]).fetchone()
    finally:
        con.close()
    if not lake.file_exists(rel):
        lake.write_bytes(rel, text.encode())
    if not known:
        with lake.transaction({"command": "tokenizer register", "scheme": scheme}) as tx:
            tx.write(
                "tokenizers",
                [
                    {
                        "scheme": scheme,
                        "tokenizer_hash": h,
                        "tokenization": type(tok).__name__,
                        "config_json": text,
                        "miditok_version": version("miditok"),
                        "vocab_size": _vocab_size(tok),
                        "is_multi_vocab": bool(tok.is_multi_voc),
                        "created_at": now_utc(),
                    }
                ],
            )
    return Registered(scheme, text, h, tok, transform)


def _vocab_size(tok: Any) -> int:
    v = tok.vocab
    return int(sum(len(x) for x in v)) if isinstance(v, list) else int(len(v))


def registered_tokenizer(lake: Lake, scheme: str) -> tuple[str, str]:
    """The hash and tokenizer.json path (lake-relative) of the latest tokenizer registered under ``scheme``."""
    con = lake.connect()
    try:
        row = con.execute(
            "SELECT tokenizer_hash FROM tokenizers WHERE scheme = ? ORDER BY created_at DESC LIMIT 1", [scheme]
        ).fetchone()
    finally:
        con.close()
    if row is None:
        raise TokenizeError(
            f"no tokenizer registered under scheme {scheme!r}; run 'midicorpus tokenize --scheme {scheme}' first"
        )
    return row[0], f"tokenizers/{row[0]}/tokenizer.json"


def _is_registered(lake: Lake, scheme: str) -> bool:
    con = lake.connect()
    try:
        return con.execute("SELECT 1 FROM tokenizers WHERE scheme = ? LIMIT 1", [scheme]).fetchone() is not None
    finally:
        con.close()


def train_tokenizer(
    lake: Lake, scheme: str, vocab_size: int, model: str = "bpe", where: str | None = None
) -> Registered:
    """Train a subword vocabulary (miditok's training) on the corpus and register it.

    Trains on the curated pieces' raw files (optionally a ``where`` selection over
    ``features``) and registers the result as scheme ``<scheme>-<model><vocab_size>`` with
    its own hash; tokenizing with it then works like any other scheme (miditok applies the
    learned merges, no fast path). Lake locked by the caller.
    """
    models = {"bpe": "BPE", "unigram": "Unigram", "wordpiece": "WordPiece"}
    if model not in models:
        raise TokenizeError(f"--model must be one of {', '.join(models)}, got {model!r}")
    if scheme not in presets.PRESETS:
        raise TokenizeError(f"unknown scheme {scheme!r}; known: {', '.join(presets.PRESETS)}")
    tok, transform = presets.build(scheme)
    if transform:
        raise TokenizeError(f"scheme {scheme!r} re-times scores before encoding; train on a scheme without a transform")
    if tok.is_multi_voc:
        raise TokenizeError(
            f"scheme {scheme!r} has several vocabularies; miditok trains single-vocabulary schemes only"
        )
    base = len(tok.vocab)
    if vocab_size <= base:
        raise TokenizeError(f"--vocab-size must exceed the base vocabulary of {scheme} ({base}), got {vocab_size}")
    con = lake.connect()
    try:
        cond = f"AND ({where})" if where else ""
        pids = [
            r[0]
            for r in con.execute(
                f"SELECT piece_id FROM features WHERE texture IS NOT NULL {cond} ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    if not pids:
        raise TokenizeError("no curated piece to train on; run 'midicorpus curate' first")
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="midicorpus-train-") as tmp:
        warnings.simplefilter("ignore")
        if lake.remote:  # miditok trains on paths: the raw files, fetched once
            paths = []
            for i in range(0, len(pids), 256):
                for pid, raw in zip(pids[i : i + 256], lake.get_raws(pids[i : i + 256])):
                    paths.append(Path(tmp) / f"{pid}.mid")
                    paths[-1].write_bytes(raw)
        else:
            paths = [lake.raw_path(p) for p in pids]
        tok.train(vocab_size=vocab_size, model=models[model], files_paths=paths)
    name = f"{scheme}-{model}{vocab_size}"
    text = presets.tokenizer_json(tok, None)
    h = presets.tokenizer_hash(text)
    rel = f"tokenizers/{h}/tokenizer.json"
    if not lake.file_exists(rel):
        lake.write_bytes(rel, text.encode())
    from importlib.metadata import version

    if not _is_registered(lake, name) or registered_tokenizer(lake, name)[0] != h:
        with lake.transaction({"command": "tokenizer train", "scheme": name}) as tx:
            tx.write(
                "tokenizers",
                [
                    {
                        "scheme": name,
                        "tokenizer_hash": h,
                        "tokenization": type(tok).__name__,
                        "config_json": text,
                        "miditok_version": version("miditok"),
                        "vocab_size": _vocab_size(tok),
                        "is_multi_vocab": False,
                        "created_at": now_utc(),
                    }
                ],
            )
    return Registered(name, text, h, tok, None)


# ---------------------------------------------------------------------------------- worker side
_CACHE: dict[str, Any] = {}


def _worker_tokenizer(text: str, h: str, use_fastpath: bool = True) -> tuple[Any, Any, dict[str, Any] | None]:
    key = f"{h}:{use_fastpath}"
    if key not in _CACHE:
        from corpus.tokenize import fastpath

        tok, transform = presets.load_from_text(text)
        fast = fastpath.FastTokenizer(tok) if use_fastpath and fastpath.supports(tok) else None
        _CACHE.clear()  # one tokenizer per worker at a time keeps memory flat
        _CACHE[key] = (tok, fast, transform)
    return _CACHE[key]  # type: ignore[no-any-return]


def encode_piece(tok: Any, fast: Any, score: Any) -> tuple[Any, list[list[int]] | None, list[int]]:
    """(ids, ids_multi, seq_lengths) for one score; raises on tokenizer failure."""
    return encode_piece_bars(tok, fast, score)[:3]  # type: ignore[return-value]


def encode_piece_bars(
    tok: Any, fast: Any, score: Any
) -> tuple[Any, list[list[int]] | None, list[int], list[list[int]] | None]:
    """(ids, ids_multi, seq_lengths, bar_starts) for one score: bar_starts per sequence, the token
    index where each bar starts (:mod:`corpus.tokenize.bars`; for MMM one list per track block), or
    None where the scheme has none (trained vocabularies, MMM over TSD / MIDILike)."""
    from corpus.tokenize import bars

    starts: list[list[int]] | None = None
    want = bars.supported(tok)
    name = type(tok).__name__
    from_ids = tok.is_multi_voc or name in ("Structured", "MMM")  # bar lines read from the ids alone
    if fast is not None:
        out = fast.encode_ids(score)
        seqs = [out] if tok.one_token_stream else out
        ev = fast.event_times
        if ev is not None and want and not from_ids:
            t, sid, offsets, pre = ev
            lengths = [len(x) for x in seqs]
            last = int(t.max()) if len(t) else 0
            starts = bars.from_events(t, sid, offsets, lengths, bars.bar_ticks(pre, last))
    elif want and not from_ids:
        pre = tok.preprocess_score(score)
        res = tok.encode(pre, no_preprocess_score=True)
        toks = [res] if not isinstance(res, list) else res
        seqs = [r.ids for r in toks]
        starts = bars.from_tokseqs(toks, lambda last: bars.bar_ticks(pre, last))
    else:
        res = tok.encode(score)
        seqs = [res.ids] if not isinstance(res, list) else [r.ids for r in res]
    bar_id = tok.vocab.get("Bar_None") if want and not from_ids else None
    if want and tok.is_multi_voc:  # CPWord / Octuple / MuMIDI: from the ids alone
        starts = bars.from_multi_voc(tok, seqs)
    elif want and name == "Structured":  # the sum of the TimeShifts before each note, 4/4 bars
        starts = bars.from_structured(tok, seqs)
    elif want and name == "MMM":  # per track block, its Bar tokens and its Track_End
        starts = bars.from_mmm(tok, seqs[0])
    elif bar_id is not None:  # REMI-like: a bar starts at its Bar token, miditok's own bar line
        starts = bars.from_bar_tokens(seqs, bar_id)
    return (*_pack(tok, seqs), starts)


def _pack(tok: Any, seqs: list[Any]) -> tuple[Any, list[list[int]] | None, list[int]]:
    lengths = [len(s) for s in seqs]
    if tok.is_multi_voc:
        multi = [list(map(int, t)) for s in seqs for t in s]
        return [], multi, lengths
    flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if seqs else np.zeros(0, np.int32)
    return flat, None, lengths  # an int32 array: cheap to send back and to turn into Arrow


def tokenize_batch(
    batch: list[tuple[str, bytes, list[int]]],
    text: str,
    h: str,
    low: int,
    high: int,
    verify: bool = False,
    use_fastpath: bool = True,
) -> list[tuple[str, int, tuple[Any, ...]]]:
    """Dask task: every (piece, shift) of the batch -> ("ok", ids, multi, lengths, bar_starts) or ("reject", reason, detail)."""
    import symusic

    from corpus.curation.transpose import transpose_score
    from corpus.parse import smf_bytes

    tok, fast, transform = _worker_tokenizer(text, h, use_fastpath)
    out: list[tuple[str, int, tuple[Any, ...]]] = []
    # A trained (BPE / Unigram / WordPiece) vocabulary: base tokens per piece, then one
    # batched subword encode for the whole batch (miditok's encode_token_ids on a list,
    # i.e. the HF tokenizers' encode_batch), the same ids as tok.encode piece by piece.
    batched = bool(tok.is_trained) and fast is None and not verify
    pending: list[tuple[int, list[Any]]] = []  # (index in out, base TokSequences)
    for pid, data, shifts in batch:
        try:
            base = symusic.Score.from_midi(smf_bytes(data))  # checked at ingest
        except Exception as exc:  # noqa: BLE001 - parsed at ingest; a failure here is this piece's
            for sh in shifts:
                out.append((pid, sh, ("reject", "tokenize_error", f"{type(exc).__name__}: {exc}")))
            continue
        for sh in shifts:
            score = base
            if sh:
                moved = transpose_score(base, sh, low=low, high=high)
                if not moved:
                    out.append((pid, sh, ("reject", "transpose_out_of_range", moved.detail)))
                    continue
                score = moved
            try:
                score = presets.apply_transform(score, transform)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if batched:
                        res = tok.encode(score, encode_ids=False)
                        base = res if isinstance(res, list) else [res]
                        lengths = [len(b.ids) for b in base]
                    else:
                        ids, multi, lengths, bar_starts = encode_piece_bars(tok, fast, score)
                cut = [str(w.message) for w in caught if "cannot tokenize entirely" in str(w.message)]
                if cut:
                    out.append((pid, sh, ("reject", "too_many_bars", cut[0])))
                elif sum(lengths) == 0:
                    out.append((pid, sh, ("reject", "no_tokens", f"{type(tok).__name__} produced no token")))
                elif batched:
                    pending.append((len(out), base))
                    out.append((pid, sh, ("ok", None, None, None, None)))
                elif verify and (rate := roundtrip.check(tok, score, ids, multi, lengths)) < 1.0:
                    out.append(
                        (
                            pid,
                            sh,
                            ("reject", "lossy_encoding", roundtrip.lossy_detail(tok, score, rate)),
                        )
                    )
                else:
                    out.append((pid, sh, ("ok", ids, multi, lengths, bar_starts)))
            except Exception as exc:  # noqa: BLE001 - the tokenizer's failure is this combination's reject
                out.append((pid, sh, ("reject", "tokenize_error", f"{type(exc).__name__}: {exc}")))
    if pending:
        try:
            tok.encode_token_ids([seq for _, base in pending for seq in base])
            failed: dict[int, str] = {}
        except Exception:  # noqa: BLE001 - the batch failed: find the piece(s), one by one
            failed = {}
            for index, base in pending:
                try:
                    tok.encode_token_ids(base)
                except Exception as exc:  # noqa: BLE001 - this piece's reject, with the message
                    failed[index] = f"{type(exc).__name__}: {exc}"
        for index, base in pending:
            pid, sh, _ = out[index]
            if index in failed:
                out[index] = (pid, sh, ("reject", "tokenize_error", failed[index]))
            else:
                out[index] = (pid, sh, ("ok", *_pack(tok, [seq.ids for seq in base]), None))
    return out


# ---------------------------------------------------------------------------------- driver side
def _wanted(
    lake: Lake, reg: Registered, mode: str, k: int, min_conf: float, where: str | None, redo_bars: bool = False
) -> tuple[dict[str, list[int]], list[dict[str, Any]], int]:
    """Shifts still to do per piece, rejects decided in the driver, and how many exist already."""
    from corpus.curation.transpose import augment_shifts, normalize_shift

    con = lake.connect()
    try:
        cond = f"AND ({where})" if where else ""
        rows = con.execute(
            "SELECT piece_id, key_tonic_pc, key_mode, key_confidence FROM features "
            f"WHERE texture IS NOT NULL {cond} ORDER BY piece_id"
        ).fetchall()
        done = set(
            con.execute(
                "SELECT piece_id, transpose FROM tokens WHERE scheme = ? AND tokenizer_hash = ? "
                + ("AND bar_starts IS NOT NULL " if redo_bars else "")
                + "UNION ALL SELECT piece_id, transpose FROM rejects WHERE stage = 'tokenize' AND scheme = ? AND tokenizer_hash = ?",
                [reg.scheme, reg.hash, reg.scheme, reg.hash],
            ).fetchall()
        )
        done_pieces = {pid for pid, t in done if t is None}
    finally:
        con.close()
    todo: dict[str, list[int]] = {}
    rejects: list[dict[str, Any]] = []
    existing = 0
    for pid, pc, kmode, conf in rows:
        if mode == "none":
            shifts = [0]
        elif mode == "augment":
            shifts = [0, *augment_shifts(k)]
        else:
            if pc is None or kmode is None:
                if pid not in done_pieces:
                    rejects.append(_reject(pid, reg, None, "no_key", "no key estimate"))
                continue
            if conf is None or conf < min_conf:
                if pid not in done_pieces:
                    rejects.append(_reject(pid, reg, None, "low_key_confidence", f"confidence {conf:.4f} < {min_conf}"))
                continue
            shifts = [normalize_shift(int(pc), kmode)]
        left = [sh for sh in shifts if (pid, sh) not in done]
        existing += len(shifts) - len(left)
        if left:
            todo[pid] = left
    return todo, rejects, existing


def _reject(pid: str, reg: Registered, shift: int | None, reason: str, detail: str) -> dict[str, Any]:
    return {
        "piece_id": pid,
        "reason": reason,
        "detail": detail,
        "source_uri": None,
        "created_at": now_utc(),
        "run_id": None,
        "scheme": reg.scheme,
        "tokenizer_hash": reg.hash,
        "transpose": shift,
    }


def _tokens_table(rows: list[dict[str, Any]]) -> Any:
    """Token rows as Arrow, single-vocabulary ids from their int32 arrays without Python ints."""
    import pyarrow as pa

    from schemas import TABLES

    schema = TABLES["tokens"]
    single = [r["ids"] for r in rows]
    if all(x is not None for x in single):
        lengths = np.fromiter((len(x) for x in single), dtype=np.int64, count=len(single))
        offsets = np.zeros(len(single) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(single) if single else np.zeros(0, np.int32)
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32, copy=False)))
    else:
        ids = pa.array([None if x is None else np.asarray(x).tolist() for x in single], type=schema.field("ids").type)
    cols = {
        "piece_id": pa.array([r["piece_id"] for r in rows], pa.string()),
        "transpose": pa.array([r["transpose"] for r in rows], pa.int32()),
        "n_tokens": pa.array([r["n_tokens"] for r in rows], pa.int64()),
        "n_sequences": pa.array([r["n_sequences"] for r in rows], pa.int32()),
        "seq_lengths": pa.array([r["seq_lengths"] for r in rows], schema.field("seq_lengths").type),
        "ids": ids,
        "ids_multi": pa.array([r["ids_multi"] for r in rows], schema.field("ids_multi").type),
        "bar_starts": pa.array([r.get("bar_starts") for r in rows], schema.field("bar_starts").type),
        "run_id": pa.array([r["run_id"] for r in rows], pa.string()),
    }
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def _flush(
    lake: Lake,
    reg: Registered,
    run_id: str,
    rows: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
    redo_bars: bool = False,
) -> None:
    """Commit the buffered token rows and rejects of one scheme in one transaction, then clear them.
    ``redo_bars``: the new rows replace the same (piece, shift) rows that have no bar starts."""
    if not rows and not rejects:
        return
    with lake.transaction(
        {"command": "tokenize", "run_id": run_id, "scheme": reg.scheme, "tokenizer_hash": reg.hash}
    ) as tx:
        rows.sort(key=lambda r: (r["piece_id"], r["transpose"]))
        if redo_bars and rows:
            import pyarrow as pa

            keys = pa.table(
                {
                    "piece_id": pa.array([r["piece_id"] for r in rows], pa.string()),
                    "transpose": pa.array([r["transpose"] for r in rows], pa.int32()),
                }
            )
            tx.delete_matching(
                "tokens", keys, "scheme = ? AND tokenizer_hash = ? AND bar_starts IS NULL", [reg.scheme, reg.hash]
            )
        tx.write("tokens", _tokens_table(rows), {"scheme": reg.scheme, "tokenizer_hash": reg.hash})
        for r in rejects:
            r["run_id"] = run_id
        tx.write("rejects", rejects, {"stage": "tokenize"})
    rows.clear()
    rejects.clear()


def tokenize(
    lake: Lake,
    engine: Engine,
    schemes: Sequence[str],
    transpose: TransposeMode = "none",
    config_file: str | None = None,
    min_key_confidence: float = DEFAULT_MIN_KEY_CONFIDENCE,
    pitch_range: tuple[int, int] = (0, 127),
    where: str | None = None,
    batch_size: int = 32,
    commit_every: int = 2000,
    verify: bool | None = None,
    use_fastpath: bool = True,
    progress: Callable[[TokenizeSummary], None] | None = None,
    redo_bars: bool = False,
) -> TokenizeSummary:
    """Tokenize every curated piece under each scheme (lake locked by the caller). ``redo_bars``:
    also the rows tokenized before bar starts were stored (same ids, now with ``bar_starts``)."""
    mode, k = parse_transpose(transpose)
    for sch in schemes:
        if not config_file and sch not in presets.PRESETS and not _is_registered(lake, sch):
            raise TokenizeError(
                f"unknown scheme {sch!r}; known: {', '.join(presets.PRESETS)}, tokenizers trained in this lake, or --config FILE"
            )
    t0 = time.perf_counter()
    summary = TokenizeSummary()
    run_id = new_txid()
    for sch in schemes:
        reg = register(lake, sch, config_file)
        check = (
            verify
            if verify is not None
            else (sch in presets.PRESETS and presets.PRESETS[sch].verify and not config_file)
        )
        ss = SchemeSummary(sch, reg.hash)
        summary.schemes.append(ss)
        if redo_bars:
            from corpus.tokenize import bars

            if not bars.supported(reg.tokenizer):
                raise TokenizeError(f"scheme {sch!r} has no bar starts to add: {bars.UNSUPPORTED}")
        todo, pre_rejects, ss.skipped_existing = _wanted(lake, reg, mode, k, min_key_confidence, where, redo_bars)
        rows: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = list(pre_rejects)
        for r in pre_rejects:
            ss.rejected += 1
            ss.reasons[r["reason"]] = ss.reasons.get(r["reason"], 0) + 1

        pids = sorted(todo)
        ss.todo = len(pids) + len(pre_rejects)
        if progress:
            progress(summary)

        def fetch(chunk: list[str], todo: dict[str, Any] = todo) -> list[tuple[str, bytes, Any]]:
            return [(pid, raw, todo[pid]) for pid, raw in zip(chunk, lake.get_raws(chunk))]

        chunks = (pids[i : i + batch_size] for i in range(0, len(pids), batch_size))
        batches = prefetched(chunks, fetch) if lake.remote else map(fetch, chunks)
        for _, results in engine.map_unordered(
            tokenize_batch, batches, reg.text, reg.hash, pitch_range[0], pitch_range[1], check, use_fastpath
        ):
            for pid, sh, res in results:
                if res[0] == "ok":
                    _, ids, multi, lengths, bar_starts = res
                    n = sum(lengths)
                    rows.append(
                        {
                            "piece_id": pid,
                            "transpose": sh,
                            "n_tokens": n,
                            "n_sequences": len(lengths),
                            "seq_lengths": lengths,
                            "bar_starts": bar_starts,
                            "ids": ids if multi is None else None,
                            "ids_multi": multi,
                            "run_id": run_id,
                        }
                    )
                    ss.pieces += 1
                    ss.tokens += n
                else:
                    rejects.append(_reject(pid, reg, sh, res[1], res[2]))
                    ss.rejected += 1
                    ss.reasons[res[1]] = ss.reasons.get(res[1], 0) + 1
            if len(rows) + len(rejects) >= commit_every:
                _flush(lake, reg, run_id, rows, rejects, redo_bars)
            if progress:
                progress(summary)
        _flush(lake, reg, run_id, rows, rejects, redo_bars)
    summary.seconds = time.perf_counter() - t0
    return summary
