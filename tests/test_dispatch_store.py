"""The content-addressed store `compress build --ray` moves files through (compress/dispatch.py), without Ray."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ftp_server import ftp_server

from compress.dispatch import Store
from compress.errors import InputError


def _roundtrip(store, folder: Path, tmp_path: Path) -> None:
    """put / get / a corrupt entry / a missing entry, on `store` whose files lie in `folder` on this machine."""
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx bytes" * 1000)
    digest = store.put(src)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [p.name for p in (folder / "sha256").iterdir()] == [digest]          # no temp file left
    assert store.put(src) == digest and len(list((folder / "sha256").iterdir())) == 1
    store.get(digest, tmp_path / "back" / "model.onnx")
    assert (tmp_path / "back" / "model.onnx").read_bytes() == src.read_bytes()
    (folder / "sha256" / digest).write_bytes(b"flipped")                         # a corrupt store is refused
    with pytest.raises(InputError, match="does not match its digest"):
        store.get(digest, tmp_path / "again" / "model.onnx")
    assert not (tmp_path / "again" / "model.onnx").exists()
    with pytest.raises(InputError, match=f"has no file {'0' * 64}"):
        store.get("0" * 64, tmp_path / "x")


def test_files_are_stored_once_under_their_sha256_and_checked_when_read(tmp_path):
    _roundtrip(Store(str(tmp_path / "store")), tmp_path / "store", tmp_path)


def test_a_store_behind_an_fsspec_url_works_the_same(tmp_path):
    """A real remote file system (FTP on loopback, through fsspec's ftp driver), not a local path."""
    with ftp_server(tmp_path / "served") as url:
        store = Store(f"{url}/team/store")
        assert store.location == f"{url}/team/store" and "secret" not in store.shown   # messages hide the password
        _roundtrip(store, tmp_path / "served" / "team" / "store", tmp_path)


def test_an_object_store_url_without_its_driver_says_what_to_install(tmp_path):
    with pytest.raises(InputError, match="no fsspec driver for s3://") as info:
        Store("s3://bucket/store")    # s3fs is not installed here
    assert "s3fs" in info.value.hint
    with pytest.raises(InputError, match="no fsspec driver for nosuch://"):
        Store("nosuch://x/y")
