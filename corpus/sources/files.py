"""Walk a folder or an archive of untrusted files, streaming, with limits.

Archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) are read
member by member without unpacking to disk. A member with an absolute path, a ``..``
component, a link, a device or a fifo is refused with a reason; decompression is bounded
per member and per archive, so an archive bomb is rejected, not unpacked. Archives found
inside a folder are walked too.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)


def is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def archive_kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(ZIP_SUFFIXES):
        return "zip"
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    return None


@dataclass(frozen=True)
class Limits:
    """Bounds on what one input may cost. Defaults fit real MIDI with a wide margin."""

    max_file_bytes: int = 64 * 1024 * 1024  # the largest Lakh file is ~4 MB
    max_archive_bytes: int = 64 * 1024**3  # total decompressed bytes read from one archive
    max_ratio: float = 1000.0  # zip: decompressed / compressed, per member


@dataclass(frozen=True)
class Entry:
    """One file found: ``relpath`` is '/'-separated, ``a.zip!member`` inside an archive."""

    relpath: str
    data: bytes | None
    reject: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.relpath.rsplit("!", 1)[-1]).name


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name must not be used, or None when it is safe."""
    if not name:
        return "empty member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"absolute path {name!r}"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return f"path with '..' {name!r}"
    if "\x00" in name:
        return f"NUL byte in name {name!r}"
    return None


def _read_bounded(fh: IO[bytes], limit: int) -> bytes | None:
    """Read at most ``limit`` bytes; None when there is more (the member lied or is a bomb)."""
    data = fh.read(limit + 1)
    return None if len(data) > limit else data


def walk(
    root: str | os.PathLike[str],
    want: Callable[[str], bool] = is_midi_name,
    limits: Limits = Limits(),
) -> Iterator[Entry]:
    """Yield every wanted file under ``root`` (a file, folder or archive), in a stable order.

    Raises FileNotFoundError when ``root`` does not exist (the caller turns it into one line).
    """
    path = check_root(root, want)
    base = path.name
    if path.is_dir():
        yield from _walk_dir(path, base, want, limits)
    elif archive_kind(path.name):
        yield from _walk_archive(path, base, want, limits)
    else:
        yield _read_file(path, base, limits)


def check_root(root: str | os.PathLike[str], want: Callable[[str], bool] = is_midi_name) -> Path:
    """The root as a Path, or FileNotFoundError / ValueError saying what is wrong with it."""
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {str(root)!r}")
    if not (path.is_dir() or archive_kind(path.name) or want(path.name)):
        raise ValueError(
            f"{str(root)!r} is neither a folder, an archive ({', '.join(ZIP_SUFFIXES + TAR_SUFFIXES)})"
            f" nor a file named {'/'.join(MIDI_SUFFIXES)}"
        )
    return path


def first_entry(root: str | os.PathLike[str], want: Callable[[str], bool] = is_midi_name) -> Entry | None:
    """The first wanted file under ``root`` (read), or None when there is none: a cheap check
    that a folder or archive is what a source expects, before anything is written."""
    return next(iter(walk(root, want, Limits())), None)


def count_files(root: str | os.PathLike[str], want: Callable[[str], bool] = is_midi_name) -> int | None:
    """How many wanted files a folder holds (names only, nothing read), for a progress total;
    None for an archive or a folder with archives in it (their members are known only by reading)."""
    path = Path(root)
    if not path.is_dir():
        return None if archive_kind(path.name) else 1
    n = 0
    for _dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
        for fname in filenames:
            if archive_kind(fname):
                return None
            n += want(fname)
    return n


def _read_file(path: Path, rel: str, limits: Limits) -> Entry:
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            return Entry(rel, None, ("file_too_large", f"{size} bytes > {limits.max_file_bytes}"))
        return Entry(rel, path.read_bytes())
    except OSError as exc:
        return Entry(rel, None, ("unreadable", f"{type(exc).__name__}: {exc}"))


def _walk_dir(path: Path, base: str, want: Callable[[str], bool], limits: Limits) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            full = Path(dirpath) / fname
            rel = f"{base}/{full.relative_to(path).as_posix()}"
            if archive_kind(fname):
                yield from _walk_archive(full, rel, want, limits)
            elif want(fname):
                if full.is_symlink() and not full.is_file():
                    yield Entry(rel, None, ("not_regular_file", "dangling symbolic link"))
                    continue
                yield _read_file(full, rel, limits)


def _walk_archive(path: Path, rel: str, want: Callable[[str], bool], limits: Limits) -> Iterator[Entry]:
    if archive_kind(path.name) == "zip":
        yield from _walk_zip(path, rel, want, limits)
    else:
        yield from _walk_tar(path, rel, want, limits)


def _walk_zip(path: Path, rel: str, want: Callable[[str], bool], limits: Limits) -> Iterator[Entry]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        yield Entry(rel, None, ("archive_corrupt", f"{type(exc).__name__}: {exc}"))
        return
    total = 0
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if info.is_dir():
                continue
            mrel = f"{rel}!{name}"
            mode = info.external_attr >> 16
            why = unsafe_member_name(name)
            if why:
                yield Entry(mrel, None, ("unsafe_path", why))
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file
                yield Entry(mrel, None, ("not_regular_file", f"zip member mode {oct(mode)}"))
                continue
            if not want(name):
                continue
            if info.file_size > limits.max_file_bytes:
                yield Entry(mrel, None, ("archive_bomb", f"declares {info.file_size} bytes > {limits.max_file_bytes}"))
                continue
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                ratio = info.file_size / info.compress_size
                yield Entry(mrel, None, ("archive_bomb", f"compression ratio {ratio:.0f} > {limits.max_ratio:.0f}"))
                continue
            if total + info.file_size > limits.max_archive_bytes:
                yield Entry(
                    mrel, None, ("archive_bomb", f"archive exceeds {limits.max_archive_bytes} bytes decompressed")
                )
                return
            try:
                with zf.open(info) as fh:
                    data = _read_bounded(fh, limits.max_file_bytes)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                yield Entry(mrel, None, ("archive_corrupt", f"{type(exc).__name__}: {exc}"))
                continue
            if data is None:
                yield Entry(mrel, None, ("archive_bomb", f"member inflates past {limits.max_file_bytes} bytes"))
                continue
            total += len(data)
            yield Entry(mrel, data)


def _walk_tar(path: Path, rel: str, want: Callable[[str], bool], limits: Limits) -> Iterator[Entry]:
    total = 0
    try:
        tf = tarfile.open(path, mode="r|*")  # streaming: one pass, nothing unpacked to disk
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Entry(rel, None, ("archive_corrupt", f"{type(exc).__name__}: {exc}"))
        return
    try:
        with tf:
            for member in tf:
                name = member.name
                if member.isdir():
                    continue
                mrel = f"{rel}!{name}"
                why = unsafe_member_name(name)
                if why:
                    yield Entry(mrel, None, ("unsafe_path", why))
                    continue
                if not member.isreg():
                    kind = (
                        "symbolic link"
                        if member.issym()
                        else "hard link"
                        if member.islnk()
                        else "device"
                        if member.ischr() or member.isblk()
                        else "fifo"
                        if member.isfifo()
                        else f"type {member.type!r}"
                    )
                    yield Entry(mrel, None, ("not_regular_file", kind))
                    continue
                if not want(PurePosixPath(name).name):
                    continue
                if member.size > limits.max_file_bytes:
                    yield Entry(
                        mrel, None, ("archive_bomb", f"member of {member.size} bytes > {limits.max_file_bytes}")
                    )
                    continue
                if total + member.size > limits.max_archive_bytes:
                    yield Entry(
                        mrel, None, ("archive_bomb", f"archive exceeds {limits.max_archive_bytes} bytes decompressed")
                    )
                    return
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                total += len(data)
                yield Entry(mrel, data)
    except (tarfile.TarError, OSError, EOFError, zlib_error()) as exc:
        yield Entry(rel, None, ("archive_corrupt", f"stopped reading: {type(exc).__name__}: {exc}"))


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
