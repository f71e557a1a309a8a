"""ModelOpt's ONNX PTQ in a process of its own.

Importing `modelopt.onnx.quantization` patches ONNX Runtime's quantization module in place
(modelopt/onnx/quantization/ort_patching.py): after it, ORT's own `quantize_static` fails in that
process. `compress` therefore runs ModelOpt in a child process, so a later ONNX Runtime quantize
stage, a sweep point or the user's own code keeps the real ONNX Runtime.

    python -m compress.tensorrt.modelopt_worker args.json     (written by the quantize stage)
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import numpy as np

    with open(argv[0]) as fh:
        args = json.load(fh)
    with np.load(args["calibration"]) as data:
        arrays = {k: data[k] for k in data.files}
    from modelopt.onnx.quantization import quantize

    try:
        quantize(args["source"], quantize_mode="int8",
                 calibration_data=arrays if len(arrays) > 1 else next(iter(arrays.values())),
                 calibration_method=args["method"], calibration_shapes=args["shapes"], calibration_eps=["cpu"],
                 output_path=args["output"], high_precision_dtype=args["high_precision"],
                 nodes_to_exclude=args["exclude"] or None, log_level="ERROR")
    except Exception as exc:   # one line for the parent, which raises it as the stage's error
        text = str(exc).strip().splitlines()
        print(f"{type(exc).__name__}: {text[0] if text else ''}"[:500], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
