"""The content-addressed store `compress build --ray` moves files through (compress/dispatch.py), without Ray."""
from __future__ import annotations

import hashlib

import pytest

from compress.dispatch import get, open_store, put
from compress.errors import InputError


def test_files_are_stored_once_under_their_sha256_and_checked_when_read(tmp_path):
    root = open_store(str(tmp_path / "store"))
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx bytes" * 1000)
    digest = put(root, src)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [p.name for p in (root / "sha256").iterdir()] == [digest]          # no temp file left
    assert put(root, src) == digest and len(list((root / "sha256").iterdir())) == 1
    get(root, digest, tmp_path / "back" / "model.onnx")
    assert (tmp_path / "back" / "model.onnx").read_bytes() == src.read_bytes()
    (root / "sha256" / digest).write_bytes(b"flipped")                         # a corrupt store is refused
    with pytest.raises(InputError, match="does not match its digest"):
        get(root, digest, tmp_path / "again" / "model.onnx")
    assert not (tmp_path / "again" / "model.onnx").exists()
    with pytest.raises(InputError, match=f"has no file {'0' * 64}"):
        get(root, "0" * 64, tmp_path / "x")


def test_an_object_store_url_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(InputError, match="only a folder path is supported") as info:
        open_store("s3://bucket/store")
    assert "s3fs" in info.value.hint
