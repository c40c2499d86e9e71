"""The one list of reject reason codes.

A piece that does not go on is a row in ``rejects`` with one of these codes, the stage that
refused it and a detail string (usually the parser's own message). Codes are short,
snake_case and stable: users filter on them in SQL, so add new ones, never rename.
"""

from __future__ import annotations

from typing import Final

# stage names
STAGE_SOURCE: Final = "source"  # refused before the bytes were read (archive member, fetch)
STAGE_PARSE: Final = "parse"  # structural check + symusic parse + validation
STAGE_CURATE: Final = "curate"
STAGE_TOKENIZE: Final = "tokenize"

REASONS: Final[dict[str, str]] = {
    # source stage: archive members and fetches
    "unsafe_path": "archive member with an absolute path or '..' component",
    "not_regular_file": "archive member that is a link, device, fifo or directory",
    "archive_bomb": "member or archive larger than the decompression limit",
    "archive_corrupt": "archive that cannot be read to the end",
    "file_too_large": "input larger than the per-file size limit",
    "unreadable": "input that cannot be read (permissions, I/O error)",
    "http_not_found": "the server answered 404 or 410 for the file",
    "http_error": "the file could not be fetched: HTTP error status or network failure after retries",
    "robots_disallowed": "robots.txt disallows fetching the file for our User-Agent",
    "convert_error": "a non-MIDI input (music21 corpus file, piano roll) that could not be converted",
    # source stage: Lakh Pianoroll Dataset .npz files
    "npz_corrupt": "not a readable .npz (bad or truncated zip, unreadable .npy member)",
    "npz_missing_info": ".npz without its info.json member",
    "npz_bad_info": "info.json that is not a JSON object, or lacks a valid resolution or track entry",
    "npz_bad_shape": "arrays missing or inconsistent (CSC components, shapes, indices, tempo, downbeat)",
    # parse stage: the bytes
    "empty_file": "zero bytes",
    "not_midi": "does not start with an MThd header (nor a RIFF RMID wrapper around one)",
    "bad_riff": "RIFF wrapper without a readable 'data' chunk holding a MIDI file",
    "bad_header": "MThd chunk with a length other than 6 or impossible values",
    "truncated": "a chunk declares more bytes than the file holds",
    "smpte_division": "SMPTE time division (timecode, not ticks per quarter)",
    "zero_division": "ticks per quarter of zero",
    "midi_format_2": "format 2 (independent sequences); not one piece",
    "no_tracks": "no MTrk chunk",
    "bad_status_byte": "an undefined or illegal status byte where an event must start",
    "bad_data_byte": "a data byte above 127 inside a channel message",
    "bad_running_status": "running status with no previous channel status",
    "bad_meta_event": "a meta event whose length runs past its track",
    "parse_error": "symusic refused the file for another reason",
    "parse_timeout": "the parser took longer than the per-file time limit",
    "parser_crash": "the parser process died (segfault, abort) on this file",
    "parse_memory": "the parser exceeded the per-file memory limit",
    "no_notes": "parses, but holds no note",
    "implausible_length": "duration or note count beyond the plausibility limits",
    "spec_violation": "strict mode: the file violates the MIDI spec although it parses",
    # curate stage
    "curate_error": "texture, key or dedup analysis failed on a piece that parsed",
    # tokenize stage (per scheme, tokenizer and transposition)
    "transpose_out_of_range": "the shift would move a pitched note outside the allowed range",
    "low_key_confidence": "normalization asked for, but the key estimate is not confident enough",
    "no_key": "normalization asked for, but the piece has no key estimate (no pitched notes)",
    "too_many_bars": "more bars than the scheme can embed (Octuple/MuMIDI); never cut silently",
    "tokenize_error": "the tokenizer raised on this piece",
    "lossy_encoding": "the tokens do not decode back to the piece's notes (verified schemes, or --verify)",
    "no_tokens": "the scheme produced no token for this piece (e.g. only drums it does not encode)",
}

# warnings: kept pieces that violate the spec in ways that do not touch the notes
WARNINGS: Final[dict[str, str]] = {
    "illegal_status_accepted": "system real-time/common bytes inside a track (no notes lost)",
    "trailing_bytes": "bytes after the last chunk",
    "unknown_chunk": "a chunk that is neither MThd nor MTrk (skipped, as the spec says)",
    "track_count_mismatch": "header track count differs from the MTrk chunks found",
    "missing_end_of_track": "a track without its End of Track meta event",
    "chunk_length_mismatch": "an End of Track before the end of its chunk",
    "running_status_after_sysex": "running status continued across a SysEx event",
    "running_status_after_meta": "running status continued across a meta event (common in Lakh)",
}


def check_reason(code: str) -> str:
    """Return ``code`` if it is a known reason, else raise (an internal invariant)."""
    if code not in REASONS:
        raise KeyError(f"unknown reject reason {code!r}; known: {sorted(REASONS)}")
    return code
