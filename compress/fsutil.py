"""Atomic writes: a file or a folder appears under its final name only when it is complete.

A write that fails (disk full, a path that cannot be created) is an InputError naming the path;
the temporary file or folder is removed, so nothing half-written is left under a final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import InputError

_DIGESTS: dict[tuple, str] = {}   # (path, inode, size, mtime, ctime) of each file -> sha256: each hashed once


def files_digest(paths: list[Path]) -> str:
    """sha256 of the files' bytes one after the other, memoised on their stat (a rewrite changes it)."""
    key = tuple((str(p), (st := p.stat()).st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for p in paths)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for path in paths:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]

HINT = "Check free space and permissions."


def _write_error(path: Path, exc: OSError) -> InputError:
    return InputError(f"cannot write {path}: {exc.strerror or exc}", hint=HINT)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):   # e.g. the parent is not a folder
            tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block succeeds."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise _write_error(final, exc) from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(final, exc) from exc
