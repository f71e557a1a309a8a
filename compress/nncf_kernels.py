"""NNCF's CPU fake-quant kernels, which the qat stage trains through.

NNCF 3.4's torch backend compiles a small C++ extension the first time a fake-quant op runs on CPU
(nncf/torch/quantization/extensions.py, `torch.utils.cpp_extension.load` into
`$TORCH_EXTENSIONS_DIR` or `~/.cache/torch_extensions/py311_<cuda>/`, then
`nncf/quantized_functions_cpu/<torch version>/`): about 40 s once, with a C++ compiler and ninja, under
a 60 s timeout (`NNCF_EXTENSION_LOAD_TIMEOUT`) that a slow machine can miss. Without a compiler NNCF
logs the failed build commands, tries `torch.compile` on its pure-torch reference functions (which
needs the compiler as well: another failure, a few seconds), and then runs them eagerly. NNCF has no
switch to skip the build.

Here the choice is made once, up front:

- `make install` builds the extension (`python -m compress.nncf_kernels`), so the first QAT run
  does not;
- `prepare()`, called by the qat stage: kernels already built, or a compiler here -> NNCF's C++
  kernels (built now if needed, with a log line, without NNCF's timeout); no compiler and nothing
  built -> NNCF's pure-torch reference functions, eager, with no build attempt. The reference
  computes the same formulas (training results agree up to float rounding) and `prepare()`'s
  answer goes into the stage details.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

CPP = "nncf C++ extension"
TORCH = "pure torch"


def _loader():
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

    return QuantizedFunctionsCPULoader


def build_dir() -> Path:
    """Where NNCF builds (and looks for) its CPU extension; honours TORCH_EXTENSIONS_DIR."""
    return Path(_loader().get_build_dir())


def is_built() -> bool:
    return (build_dir() / f"{_loader().name()}.so").is_file()


def missing_tool() -> str | None:
    """Why the extension cannot be built here (None: it can). torch compiles with $CXX (default c++)
    through ninja; pip installs ninja into the virtualenv's bin/, which is not on PATH when the venv is
    not activated, so that folder is added to PATH for the build."""
    from torch.utils.cpp_extension import get_cxx_compiler, is_ninja_available

    compiler = get_cxx_compiler()
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH; install g++, or set CXX to a C++ compiler)"
    if not is_ninja_available():
        venv_bin = Path(sys.executable).parent
        if (venv_bin / "ninja").is_file():
            os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        if not is_ninja_available():
            return "ninja is not on PATH (pip install ninja)"
    return None


class _EagerReference:
    """NNCF's reference fake-quant functions without the torch.compile wrapper (which needs a compiler)."""

    @staticmethod
    def Quantize_forward(*args):   # NNCF's names
        from nncf.torch.quantization.reference import torch_executor

        return torch_executor.forward(*args)

    @staticmethod
    def Quantize_backward(*args):
        from nncf.torch.quantization.reference import torch_executor

        return torch_executor.backward(*args)


def describe(namespace) -> str:
    if namespace is _EagerReference:
        return TORCH
    return CPP if getattr(namespace, "__file__", None) else f"nncf reference ({getattr(namespace, '__name__', namespace)})"


def prepare(log: Callable[[str], None] = print) -> str:
    """Pick and load the fake-quant kernels for this process (before NNCF's first fake-quant op);
    returns what the stage details record: "nncf C++ extension" or "pure torch: <why>"."""
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    if QuantizedFunctionsCPU._loaded_namespace is not None:   # chosen earlier in this process
        return describe(QuantizedFunctionsCPU._loaded_namespace)
    why = missing_tool()
    if why is None or is_built():
        if not is_built():
            log(f"building NNCF's C++ fake-quant kernels (once, about 40 s; cached in {build_dir()})")
        start = time.perf_counter()
        namespace = _loader().load()   # NNCF catches a failed build, logs why and returns its reference functions
        if namespace is not ReferenceQuantizedFunctions:
            QuantizedFunctionsCPU._loaded_namespace = namespace
            if time.perf_counter() - start > 5:
                log(f"NNCF's C++ fake-quant kernels built in {time.perf_counter() - start:.0f} s")
            return CPP
        why = "NNCF could not build its C++ kernels (its warning above says why)"
    QuantizedFunctionsCPU._loaded_namespace = _EagerReference
    log(f"{why}: fake-quant runs NNCF's pure-torch reference (same results up to float rounding; "
        f"NNCF's C++ kernels are faster)")
    return f"{TORCH}: {why}"


def main() -> int:
    """`python -m compress.nncf_kernels` (run by `make install`): build NNCF's CPU fake-quant kernels
    now. Without a compiler it says what QAT will use instead; exits 0 either way."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)   # a CUDA-less warning on import
    start = time.perf_counter()
    if prepare(lambda msg: print(f"compress: {msg}", flush=True)) == CPP:
        print(f"compress: NNCF's C++ fake-quant kernels are ready in {build_dir()} "
              f"({time.perf_counter() - start:.0f} s)")
    else:
        print("compress: with a C++ compiler (e.g. `apt-get install g++`), `make kernels` builds NNCF's C++ kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
