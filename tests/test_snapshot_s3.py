"""Snapshots on an object-store lake (moto's S3 server): the same versions and bytes as on a local
lake, the manifest as the commit point, verify, verified and cached local copies, training."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from corpus import snapshot as S
from corpus.cli import main
from corpus.lake import Lake
from tests.conftest import new_pg_database, point_at_s3

SPEC = ["--scheme", "remi_multitrack", "--split", "0.6,0.2,0.2", "--with-midi"]  # midi: raw bytes read from S3


def _cli(capsys: pytest.CaptureFixture[str], lake: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["--lake", lake, "--workers", "0", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def lakes(s3_endpoint: str, pg_server, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same real files ingested, curated and tokenized through the CLI into an S3 lake and a
    local lake; a snapshot ``mt`` created on both."""
    import boto3

    mp = pytest.MonkeyPatch()
    point_at_s3(mp, s3_endpoint)
    mp.setenv("MIDICORPUS_CATALOG", new_pg_database(pg_server))
    try:
        bucket = f"snap-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        s3.create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/lake"
        local = str(tmp_path_factory.mktemp("snap-local") / "lake")
        midi = data_dir / "midi"
        for lake in (url, local):
            for argv in (
                ["ingest", "dir", str(midi / "magenta"), "--source", "magenta", "--license", "Apache-2.0"],
                ["ingest", "dir", str(midi / "miditok"), "--source", "miditok", "--license", "MIT"],
                ["curate"],
                ["tokenize", "--scheme", "remi_multitrack"],
                ["snapshot", "create", "mt", *SPEC],
            ):
                assert main(["--lake", lake, "--workers", "0", *argv]) == 0, (lake, argv)
        version = S.list_snapshots(Lake(url))[0]["version"]
        yield SimpleNamespace(url=url, local=local, bucket=bucket, s3=s3, prefix="lake/", version=version)
    finally:
        mp.undo()


def _flip_last_byte(lakes: SimpleNamespace, rel: str) -> None:
    key = lakes.prefix + rel
    data = bytearray(lakes.s3.get_object(Bucket=lakes.bucket, Key=key)["Body"].read())
    data[-1] ^= 1
    lakes.s3.put_object(Bucket=lakes.bucket, Key=key, Body=bytes(data))


def test_same_version_and_bytes_as_a_local_lake(lakes, capsys) -> None:
    remote, local = Lake(lakes.url), Lake(lakes.local)
    (r,) = S.list_snapshots(remote)
    (lc,) = S.list_snapshots(local)
    assert r["version"] == lc["version"] == lakes.version and r["path"] == f"{lakes.url}/snapshots/mt/{lakes.version}"
    assert S.resolve(remote, "mt") == r["path"] and S.resolve(local, "mt") == Path(lc["path"])
    rel = f"snapshots/mt/{lakes.version}"
    manifest = json.loads(remote.read_bytes(f"{rel}/manifest.json"))
    assert sorted(remote.list_files(rel)) == sorted(
        [f"{rel}/{f}" for f in manifest["files"]] + [f"{rel}/README.md", f"{rel}/manifest.json"]
    )
    for f in [*manifest["files"], "README.md"]:
        assert remote.read_bytes(f"{rel}/{f}") == (Path(lc["path"]) / f).read_bytes(), f
    # the same snapshot again: already there, registered once
    rc, out, _ = _cli(capsys, lakes.url, "snapshot", "create", "mt", *SPEC)
    assert rc == 0 and f"mt@{lakes.version} already there" in out and lakes.url in out
    rows = remote.query("SELECT version, manifest_sha256, path FROM snapshots WHERE name = 'mt'").to_pylist()
    import hashlib

    assert rows == [
        {
            "version": lakes.version,
            "manifest_sha256": hashlib.sha256(remote.read_bytes(f"{rel}/manifest.json")).hexdigest(),
            "path": rel,
        }
    ]
    n = remote.query("SELECT count(*) AS n FROM snapshot_pieces WHERE name = 'mt'").to_pylist()[0]["n"]
    assert n == manifest["counts"]["rows"]
    # list, show, verify, diff through the CLI
    rc, out, _ = _cli(capsys, lakes.url, "snapshot", "list")
    assert rc == 0 and lakes.version in out and "s3://" in out
    rc, out, _ = _cli(capsys, lakes.url, "snapshot", "show", "mt")
    assert rc == 0 and out.startswith(f"# Snapshot mt@{lakes.version}") and "Apache-2.0" in out
    rc, out, _ = _cli(capsys, lakes.url, "snapshot", "verify", f"mt@{lakes.version[:6]}")
    assert rc == 0 and f"mt@{lakes.version}: {len(manifest['files'])} files verified" in out
    for lake in (lakes.url, lakes.local):
        assert (
            _cli(
                capsys, lake, "snapshot", "create", "mt", *SPEC[:2], "--split", "0.6,0.2,0.2", "--where", "n_notes > 50"
            )[0]
            == 0
        )
    v2 = S.list_snapshots(remote)[-1]["version"]
    assert v2 != lakes.version and v2 == S.list_snapshots(local)[-1]["version"]
    d = S.diff(remote, f"mt@{lakes.version}", f"mt@{v2}")
    assert d == S.diff(local, f"mt@{lakes.version}", f"mt@{v2}")
    assert d["tokens_removed"] > 0 and d["rows_added"] == [] and d["rows_moved_split"] == []
    rc, out, _ = _cli(capsys, lakes.url, "snapshot", "diff", f"mt@{lakes.version}", f"mt@{v2}")
    assert rc == 0 and "pieces removed" in out


def test_verify_and_local_copy_detect_a_corrupted_object(lakes, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MIDICORPUS_CACHE", str(tmp_path / "cache"))
    rc, out, _ = _cli(capsys, lakes.url, "snapshot", "create", "tamper", *SPEC, "--where", "source = 'magenta'")
    assert rc == 0 and "created" in out
    version = S.list_snapshots(Lake(lakes.url))[-1]["version"]
    assert S.verify(Lake(lakes.url), "tamper").ok
    _flip_last_byte(lakes, f"snapshots/tamper/{version}/train/tokens.npy")
    v = S.verify(Lake(lakes.url), "tamper")
    assert not v.ok and v.problems == ["train/tokens.npy sha256 differs from the manifest"]
    rc, out, err = _cli(capsys, lakes.url, "snapshot", "verify", "tamper")
    assert rc == 1 and "train/tokens.npy sha256 differs from the manifest" in out and not err
    # a damaged snapshot is never cached, and training on it is one clear error
    with pytest.raises(S.SnapshotError, match="does not match its manifest.*train/tokens.npy sha256 differs"):
        S.local_snapshot(Lake(lakes.url), "tamper")
    assert not list((tmp_path / "cache" / "snapshots" / "tamper").iterdir())
    rc, out, err = _cli(
        capsys,
        lakes.url,
        "train",
        "--snapshot",
        "tamper",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    )
    assert rc == 2 and err.startswith("midicorpus: error: the download of tamper@") and len(err.splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    lakes.s3.delete_object(Bucket=lakes.bucket, Key=f"{lakes.prefix}snapshots/tamper/{version}/valid/index.npy")
    assert "valid/index.npy is missing" in S.verify(Lake(lakes.url), "tamper").problems


def test_interrupted_upload_is_invisible_and_a_recreate_completes_it(lakes, capsys, monkeypatch) -> None:
    spec = S.SnapshotSpec("half", "remi_multitrack", split=(0.6, 0.2, 0.2), where="source = 'miditok'")
    lake = Lake(lakes.url)

    def killed(rel: str, data: bytes) -> None:
        raise KeyboardInterrupt  # killed before the manifest, the commit point, was written

    monkeypatch.setattr(lake, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt), lake.lock():
        S.create(lake, spec)
    partial = Lake(lakes.url).list_files("snapshots/half")
    assert partial and not any(f.endswith("/manifest.json") for f in partial)
    assert "half" not in {r["name"] for r in S.list_snapshots(Lake(lakes.url))}
    rc, _, err = _cli(capsys, lakes.url, "snapshot", "show", "half")
    assert rc == 2 and "no snapshot named 'half'" in err
    # another version's half upload is dropped by the next create; this one is uploaded again
    Lake(lakes.url).write_bytes("snapshots/stray/0123456789ab/train/tokens.npy", b"partial")
    lake = Lake(lakes.url)
    with lake.lock():
        res = S.create(lake, spec)
    assert res.created and res.path == f"{lakes.url}/snapshots/half/{res.version}"
    assert {f.split("/")[2] for f in partial} == {res.version}
    assert S.verify(Lake(lakes.url), "half").ok and not Lake(lakes.url).list_files("snapshots/stray")
    with lake.lock():
        again = S.create(lake, spec)
    assert not again.created and again.version == res.version
    assert lake.query("SELECT count(*) AS n FROM snapshots WHERE name = 'half'").to_pylist() == [{"n": 1}]


def test_local_snapshot_downloads_verifies_and_caches(lakes, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MIDICORPUS_CACHE", str(tmp_path / "cache"))
    parent = tmp_path / "cache" / "snapshots" / "mt"
    dead = parent / f".{lakes.version}.download-{socket.gethostname()}-4195304"  # a killed download
    (dead / "train").mkdir(parents=True)
    downloads: list[str] = []
    real = Lake.download

    def counting(self: Lake, rel: str, local: Path) -> Path:
        downloads.append(rel)
        return real(self, rel, local)

    monkeypatch.setattr(Lake, "download", counting)
    path = S.local_snapshot(Lake(lakes.url), f"mt@{lakes.version}")
    assert path == parent / lakes.version and downloads == [f"snapshots/mt/{lakes.version}"]
    assert S.verify_dir(path).ok and sorted(p.name for p in parent.iterdir()) == [lakes.version]
    local_copy = Path(S.resolve(Lake(lakes.local), f"mt@{lakes.version}"))
    for f in S.load_manifest(path)["files"]:
        assert (path / f).read_bytes() == (local_copy / f).read_bytes(), f
    mtime = (path / "train" / "tokens.npy").stat().st_mtime_ns
    for ref in (f"mt@{lakes.version}", f"mt@{lakes.version[:5]}"):
        assert S.local_snapshot(Lake(lakes.url), ref) == path
    assert len(downloads) == 1 and (path / "train" / "tokens.npy").stat().st_mtime_ns == mtime
    # an incomplete copy (a truncated file) is downloaded again
    (path / "valid" / "index.npy").write_bytes(b"")
    assert S.local_snapshot(Lake(lakes.url), f"mt@{lakes.version}") == path and len(downloads) == 2
    assert S.verify_dir(path).ok
    # a local lake's snapshot is its own folder; a version URL works in the loaders too
    assert S.local_snapshot(Lake(lakes.local), f"mt@{lakes.version}") == local_copy
    assert S.local_snapshot_url(f"{lakes.url}/snapshots/mt/{lakes.version}") == path and len(downloads) == 2
    with pytest.raises(S.SnapshotError, match="not a snapshot version URL"):
        S.local_snapshot_url(f"{lakes.url}/mt")


def test_train_from_an_s3_snapshot(lakes, capsys, tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    from train.data import PackedBatches

    monkeypatch.setenv("MIDICORPUS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    rc, out, err = _cli(
        capsys,
        lakes.url,
        "train",
        "--snapshot",
        "mt",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--device",
        "cpu",
        "--out",
        str(run),
    )
    assert rc == 0, err
    assert f"local copy in {tmp_path / 'cache' / 'snapshots' / 'mt'}" in out and "train: cpu, 3 steps, loss " in out
    metrics = json.loads((run / "metrics.json").read_text())
    latest = str(S.resolve(Lake(lakes.url), "mt")).rsplit("/", 1)[1]
    assert metrics["snapshot"] == f"mt@{latest}" and metrics["steps"] == 3 and metrics["valid_loss"] is not None
    ds = PackedBatches(f"{lakes.url}/snapshots/mt/{lakes.version}", seq_len=32, batch_size=2)
    assert ds.snapshot_dir == tmp_path / "cache" / "snapshots" / "mt" / lakes.version
    assert ds.batch(0, 0).shape == (2, 32)
    assert not os.environ.get("MIDICORPUS_LAKE")
