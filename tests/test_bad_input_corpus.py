"""The bad-input corpus (tests/bad_inputs/*.yaml) through the CLI: exit 2, one `error:` line, no traceback,
nothing that looks complete.

Each case is one recipe file whose header comments say what must happen:

    # what is wrong, in words
    # expect: a fragment the error must contain        (one or more)
    # exit: 2                                           (optional; 2 by default)
    # out: below-a-file                                 (optional: --out is a path below a regular file)
    # inject: open:<needle> | replace:<needle>          (optional: a simulated ENOSPC inside compress.fsutil)
    # xfail: why                                        (optional: a known bug, not fixed yet)

Paths in the recipes are relative to the recipe, as in any recipe. The corpus is copied into a scratch
tree that mirrors the repository (`recipes/` and `calibration_data/` are symlinks), and the binary
inputs the recipes name under `generated/` (broken .onnx/.pt/.npz/.npy files, image folders) are made
there at test time, so the repository holds no binary fixtures and no run writes into it.

The cases run concurrently (most fail while loading, in a fraction of a second to a few seconds).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, ROOT, cli

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))
WORKERS = 2
TIMEOUT = 300

# Runs the CLI with a simulated full disk inside compress.fsutil only (BAD_INPUT_ENOSPC=kind:needle).
ENOSPC_CLI = r'''
import builtins, errno, os, sys, types
import compress.fsutil as fsutil
kind, _, needle = os.environ["BAD_INPUT_ENOSPC"].partition(":")

def _full(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

if kind == "open":
    def _open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and needle in str(file):
            raise _full(file)
        return builtins.open(file, mode, *args, **kwargs)
    fsutil.open = _open
elif kind == "replace":
    def _replace(src, dst, *args, **kwargs):
        if needle in str(dst):
            raise _full(dst)
        return os.replace(src, dst, *args, **kwargs)
    fsutil.os = types.SimpleNamespace(**{**vars(os), "replace": _replace})
else:
    raise SystemExit(f"unknown injection {kind!r}")
sys.argv[0] = "compress"
from compress.cli import main
main()
'''


@dataclass
class Case:
    name: str
    recipe: Path
    expect: list[str]
    exit: int = 2
    out: str | None = None
    inject: str | None = None
    xfail: str | None = None


def _parse(path: Path) -> Case:
    case = Case(path.stem, path, [])
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"#\s*(expect|exit|out|inject|xfail):\s?(.*)$", line)
        if match:
            key, value = match.groups()
            if key == "expect":
                case.expect.append(value.strip())
            elif key == "exit":
                case.exit = int(value)
            else:
                setattr(case, key, value.strip())
    assert case.expect, f"{path.name} has no '# expect:' line"
    return case


# ---------------------------------------------------------------- inputs made at test time
def _images(folder: Path, count: int, *, offset: int = 0) -> list[Path]:
    from PIL import Image

    with np.load(DATA / "fashion_mnist_eval.npz") as f:
        x, y = f["x"][offset:offset + count], f["y"][offset:offset + count]
    files = []
    for i, (image, label) in enumerate(zip(x, y)):
        sub = folder / f"class{int(label)}"
        sub.mkdir(parents=True, exist_ok=True)
        files.append(sub / f"{i:03d}.png")
        Image.fromarray(image[0]).save(files[-1])
    return files


def _tiny_onnx() -> bytes:
    """A linear classifier [N, 1, 28, 28] -> [N, 10]: a whole run on it takes well under a second (no torch)."""
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).standard_normal(7840).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, [784, 10], weights.tobytes(), raw=True)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _generate(gen: Path) -> None:
    import torch

    gen.mkdir()
    rng = np.random.default_rng(0)
    (gen / "binary_target.yaml").write_bytes(b"\xff\xfe\x00\x9c not text")
    onnx_bytes = _tiny_onnx()
    (gen / "tiny.onnx").write_bytes(onnx_bytes)
    (gen / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    weights = (DATA / "fashion_cnn.pt").read_bytes()
    (gen / "corrupted.pt").write_bytes(weights[: len(weights) // 2])
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), gen / "full_module.pt")

    with np.load(DATA / "fashion_mnist_eval.npz") as f:
        x, y = f["x"][:50], f["y"][:50]
    np.save(gen / "eval_x.npy", x)
    np.save(gen / "labels_40.npy", y[:40].astype(np.int64))
    (gen / "empty_file.npy").write_bytes(b"")
    np.savez(gen / "labels_out_of_range.npz", x=x, y=y.astype(np.int64) + 5)
    np.savez(gen / "empty.npz", x=np.zeros((0, 1, 28, 28), np.uint8))
    np.savez(gen / "no_arrays.npz")
    np.save(gen / "empty.npy", np.zeros((0, 1, 28, 28), np.float32))
    noisy = rng.random((40, 1, 28, 28), dtype=np.float32)
    noisy[17, 0, 3, 4] = np.nan
    np.savez(gen / "nan.npz", x=noisy)
    np.savez(gen / "images32.npz", x=np.zeros((20, 1, 32, 32), np.uint8))
    np.savez(gen / "float_tokens.npz", tokens=rng.random((20, 8), dtype=np.float32) * 15)
    np.savez(gen / "objects.npz", x=np.array([{"a": 1}, None, "text"], dtype=object))
    np.save(gen / "strings.npy", np.full((4, 1, 28, 28), "px"))
    with zipfile.ZipFile(gen / "member_not_npy.npz", "w") as archive:
        archive.writestr("x.npy", b"these bytes are not an .npy array")
    np.savez_compressed(gen / "damaged.npz", x=rng.random((50, 1, 28, 28), dtype=np.float32))
    damaged = bytearray((gen / "damaged.npz").read_bytes())
    damaged[200:400] = bytes(200)   # inside the compressed member; the zip directory stays intact
    (gen / "damaged.npz").write_bytes(bytes(damaged))

    (gen / "empty_images" / "class0").mkdir(parents=True)
    (gen / "empty_images" / "class0" / "README.txt").write_text("no images here\n")
    _images(gen / "corrupt_first_images", 8)
    (gen / "corrupt_first_images" / "class0" / "000-corrupt.png").write_text("this is not a PNG\n")
    files = _images(gen / "corrupt_last_images", 20)
    png = files[0].read_bytes()
    last = sorted(p for p in (gen / "corrupt_last_images").iterdir())[-1]
    (last / "zzz-truncated.png").write_bytes(png[: len(png) // 2])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A scratch tree that mirrors the repository layout: <root>/tests/bad_inputs + generated inputs."""
    root = tmp_path_factory.mktemp("corpus").resolve()
    for name in ("recipes", "calibration_data"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    shutil.copytree(CORPUS, root / "tests" / "bad_inputs")
    _generate(root / "tests" / "bad_inputs" / "generated")
    return root / "tests" / "bad_inputs"


def _run(case: Case, scratch: Path) -> tuple[subprocess.CompletedProcess, Path]:
    out = scratch / "runs"
    if case.out == "below-a-file":
        blocker = scratch / "a-file"
        blocker.write_text("not a folder\n")
        out = blocker / "runs"
    elif case.out is not None:
        raise AssertionError(f"{case.name}: unknown out mode {case.out!r}")
    if case.inject is None:
        return cli("run", case.recipe, "--out", out, timeout=TIMEOUT), out
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", BAD_INPUT_ENOSPC=case.inject)
    result = subprocess.run([sys.executable, "-c", ENOSPC_CLI, "run", str(case.recipe), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    return result, out


@pytest.fixture(scope="module")
def results(request, corpus, tmp_path_factory) -> dict:
    """Run every selected case once, concurrently; tests then only look at the outcome."""
    wanted = sorted({item.callspec.params["case"] for item in request.session.items
                     if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")})
    scratch = tmp_path_factory.mktemp("runs")
    cases = {name: _parse(corpus / f"{name}.yaml") for name in wanted}

    def one(name: str):
        (scratch / name).mkdir()
        return name, _run(cases[name], scratch / name)

    with ThreadPoolExecutor(WORKERS) as pool:
        done = dict(pool.map(one, wanted))
    return {name: (cases[name], *done[name]) for name in wanted}


def test_corpus_is_big_enough():
    assert len(CASES) >= 30
    assert (CORPUS / "assets" / "factories.py").is_file()


def _check(spec: Case, result: subprocess.CompletedProcess, out: Path) -> None:
    text = result.stderr + result.stdout
    flat = " ".join(result.stderr.split())   # rich wraps long lines; compare on single spaces
    assert result.returncode == spec.exit, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in spec.expect:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in:\n{result.stderr[-3000:]}"
    if out.exists():   # nothing that looks complete, no temp files left behind
        leftovers = list(out.rglob("report.*")) + [p for p in out.rglob("*") if ".tmp-" in p.name]
        assert not leftovers, f"looks complete or left temp files: {leftovers}"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input(results, case):
    spec, result, out = results[case]
    if not spec.xfail:
        _check(spec, result, out)
        return
    try:
        _check(spec, result, out)
    except AssertionError as exc:
        pytest.xfail(f"{spec.xfail} ({str(exc).splitlines()[0][:200]})")

