"""A file that crashes, hangs or bloats the parser costs that file, never the run."""

from __future__ import annotations

from pathlib import Path

from corpus.sandbox import ParserProcess

TARGET = "tests.helpers.faulty_parser:faulty"


def test_segfault_timeout_memory_then_goes_on(data_dir: Path) -> None:
    good = (data_dir / "midi/jazz-soft-test-midi-files/test-c-major-scale.mid").read_bytes()
    p = ParserProcess(TARGET, timeout_s=5.0, memory_mb=1024, policy="lenient")
    try:
        assert p.run(good)[0] == "ok"
        assert p.run(b"SEGV") == ("reject", "parser_crash", "parser killed by SIGSEGV")
        assert p.run(good)[0] == "ok"
        assert p.run(b"HANG") == ("reject", "parse_timeout", "no answer within 5 s")
        out = p.run(b"BLOAT")
        assert out[:2] == ("reject", "parse_memory")
        assert p.run(good)[0] == "ok"
        assert p.run(b"") == ("reject", "empty_file", "0 bytes")
        assert p.restarts == 2
    finally:
        p.close()
