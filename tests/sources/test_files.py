"""Archives are untrusted: unsafe members are refused with a reason, bombs are bounded."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from corpus.sources.files import Limits, walk

SCALE = "midi/jazz-soft-test-midi-files/test-c-major-scale.mid"


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _info(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info


def test_tar_members_safe_and_unsafe(tmp_path: Path, data_dir: Path) -> None:
    midi = (data_dir / SCALE).read_bytes()
    arc = _tar(
        tmp_path / "x.tar.gz",
        [
            (_info("ok/a.mid"), midi),
            (_info("ok/B.MIDI"), midi),
            (_info("ok/readme.txt"), b"not an input"),
            (_info("/etc/evil.mid"), midi),
            (_info("ok/../../evil.mid"), midi),
            (_info("ok/link.mid", tarfile.SYMTYPE, "/etc/passwd"), None),
            (_info("ok/hard.mid", tarfile.LNKTYPE, "ok/a.mid"), None),
            (_info("ok/dev.mid", tarfile.CHRTYPE), None),
            (_info("ok/fifo.mid", tarfile.FIFOTYPE), None),
        ],
    )
    got = {e.relpath.split("!", 1)[1]: (e.data is not None, e.reject[0] if e.reject else None) for e in walk(arc)}
    assert got == {
        "ok/a.mid": (True, None),
        "ok/B.MIDI": (True, None),
        "/etc/evil.mid": (False, "unsafe_path"),
        "ok/../../evil.mid": (False, "unsafe_path"),
        "ok/link.mid": (False, "not_regular_file"),
        "ok/hard.mid": (False, "not_regular_file"),
        "ok/dev.mid": (False, "not_regular_file"),
        "ok/fifo.mid": (False, "not_regular_file"),
    }
    assert not any(tmp_path.glob("**/evil.mid"))  # nothing was written anywhere


def test_zip_members_and_bomb(tmp_path: Path, data_dir: Path) -> None:
    midi = (data_dir / SCALE).read_bytes()
    arc = tmp_path / "x.zip"
    with zipfile.ZipFile(arc, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.kar", midi)
        zf.writestr("../up.mid", midi)
        zf.writestr("bomb.mid", b"\x00" * (4 << 20))  # 4 MB of zeros, compresses ~1000x
        link = zipfile.ZipInfo("link.mid")
        link.external_attr = 0o120777 << 16  # a symbolic link
        zf.writestr(link, "a.kar")
    limits = Limits(max_file_bytes=1 << 20)
    got = {e.relpath.split("!", 1)[1]: e.reject[0] if e.reject else "ok" for e in walk(arc, limits=limits)}
    assert got == {
        "a.kar": "ok",
        "../up.mid": "unsafe_path",
        "bomb.mid": "archive_bomb",
        "link.mid": "not_regular_file",
    }


def test_ratio_bomb_under_size_limit(tmp_path: Path) -> None:
    arc = tmp_path / "r.zip"
    with zipfile.ZipFile(arc, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("z.mid", b"\x00" * (8 << 20))
    (entry,) = walk(arc)
    assert entry.reject is not None and entry.reject[0] == "archive_bomb" and "ratio" in entry.reject[1]


def test_tar_bomb_is_bounded(tmp_path: Path) -> None:
    arc = _tar(tmp_path / "b.tar.gz", [(_info("big.mid"), b"\x00" * (3 << 20))])
    (entry,) = walk(arc, limits=Limits(max_file_bytes=1 << 20))
    assert entry.reject == ("archive_bomb", f"member of {3 << 20} bytes > {1 << 20}")


def test_corrupt_archive_is_one_reject(tmp_path: Path, data_dir: Path) -> None:
    midi = (data_dir / SCALE).read_bytes()
    arc = _tar(tmp_path / "t.tar.gz", [(_info(f"f{i}.mid"), midi + bytes([i])) for i in range(50)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    entries = list(walk(cut))
    assert entries[-1].reject is not None and entries[-1].reject[0] == "archive_corrupt"
    assert all(e.reject is None for e in entries[:-1])
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really")
    assert [e.reject[0] for e in walk(bad_zip) if e.reject] == ["archive_corrupt"]


def test_folder_with_nested_archives_and_any_case(tmp_path: Path, data_dir: Path) -> None:
    midi = (data_dir / SCALE).read_bytes()
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "A.MID").write_bytes(midi)
    (root / "sub" / "b.Rmi").write_bytes(midi)
    (root / "notes.txt").write_text("x")
    with zipfile.ZipFile(root / "sub" / "inner.zip", "w") as zf:
        zf.writestr("deep/c.midi", midi)
    rel = [e.relpath for e in walk(root)]
    assert rel == ["in/A.MID", "in/sub/b.Rmi", "in/sub/inner.zip!deep/c.midi"]


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(walk(tmp_path / "nope"))
