"""Write calibration_data/text_{calib,eval}.npz: real English text as byte tokens for TextEncoder.

Source: the docstrings of Python's standard library (PSF License), split into paragraphs,
encoded as UTF-8 bytes (1..255; 0 is padding), cut or padded to 64 tokens with an attention
mask. Calibration and eval come from disjoint modules. Regenerate with
`.venv/bin/python scripts/make_text_data.py` (the result depends on the Python version's
docstrings; the shipped files were made with Python 3.11).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np

LENGTH = 64
CALIB_MODULES = ["collections", "json", "pathlib", "argparse", "logging", "itertools", "functools", "re"]
EVAL_MODULES = ["os", "shutil", "subprocess", "datetime", "textwrap", "statistics", "heapq", "string", "csv",
                "zipfile", "tarfile", "email.message", "http.client", "urllib.parse", "threading"]


def paragraphs(module_names: list[str]) -> list[str]:
    found: list[str] = []
    for name in module_names:
        module = importlib.import_module(name)
        for _, obj in [(name, module), *inspect.getmembers(module)]:
            documented = inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)
            doc = inspect.getdoc(obj) if documented else None
            for para in (doc or "").split("\n\n"):
                text = " ".join(para.split())
                if len(text) >= 24 and text not in found:
                    found.append(text)
    return found


def encode(texts: list[str], count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    chosen = [texts[i] for i in rng.permutation(len(texts))[:count]]
    ids = np.zeros((len(chosen), LENGTH), np.int64)
    mask = np.zeros((len(chosen), LENGTH), np.int64)
    for row, text in enumerate(chosen):
        data = [b for b in text.encode("utf-8") if b != 0][:LENGTH]
        ids[row, : len(data)] = data
        mask[row, : len(data)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def main() -> None:
    out = Path("calibration_data")
    np.savez_compressed(out / "text_calib.npz", **encode(paragraphs(CALIB_MODULES), 300, 0))
    np.savez_compressed(out / "text_eval.npz", **encode(paragraphs(EVAL_MODULES), 500, 1))
    for name in ("text_calib.npz", "text_eval.npz"):
        with np.load(out / name) as f:
            print(name, f["input_ids"].shape, "mean tokens", f["attention_mask"].sum(1).mean())


if __name__ == "__main__":
    main()
