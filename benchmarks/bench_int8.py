"""Side-by-side INT8 timings on one model, in one process, as ratios (these machines are noisy).

Times, at batch 1 with pinned threads: torch eager FP32, ONNX Runtime FP32 and INT8 (made by
compress), OpenVINO FP32 and INT8 (made by compress), and OpenVINO INT8 made by calling NNCF
directly with its defaults. Rounds are interleaved so drift hits every variant alike; each
variant's figure is the median of its per-round p50s. Accuracy is agreement with torch FP32
on real images (top-1 agreement of the 1000-way output, cosine).

    .venv/bin/python benchmarks/bench_int8.py [--model resnet18] [--threads 2] [--rounds 5]

Targets (issue #3): compress INT8 within 10% of NNCF-direct latency and at least as accurate;
OpenVINO INT8 vs torch eager FP32 >= 2x on AVX2-only CPUs, >= 4x with VNNI, >= 8x with AMX.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from compress.artifacts import OnnxModel, OpenVinoModel, TorchModel  # noqa: E402
from compress.data import open_dataset  # noqa: E402
from compress.recipe import parse_recipe  # noqa: E402
from compress.runtimes import open_session  # noqa: E402
from compress.validation import Agreement, latency_feeds, machine_info, measure_latency  # noqa: E402


def recipe(model: str, stages: list[dict], samples: int, threads: int) -> dict:
    return {
        "name": f"bench-{model}",
        "model": {"source": "torchvision", "name": model, "input": {"shape": [1, 3, 224, 224]}},
        "data": {"calibration": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": samples},
                 "eval": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 100},
                 "transform": {"resize": 224, "center_crop": 224, "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225]},
                 "batch_size": 10},
        "metric": {"primary": "top1_agreement"},
        "stages": stages,
        "latency": {"threads": threads, "warmup": 3, "runs": 5},
    }


def nncf_direct(module, calibration, samples: int, out: Path) -> Path:
    """What a user writes with NNCF's own API: convert, quantize with defaults, save."""
    import nncf
    import openvino as ov
    import torch

    ov_model = ov.convert_model(module, example_input=torch.zeros(1, 3, 224, 224))
    data = [feeds["input"] for feeds in calibration.samples()]
    quantized = nncf.quantize(ov_model, nncf.Dataset(data), subset_size=samples)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def agreement(session, reference, dataset) -> dict:
    agree = Agreement()
    for (feeds, _), ref in zip(dataset.batches(10), reference):
        agree.update(session.run(feeds)[0], ref)
    return agree.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per round")
    parser.add_argument("--samples", type=int, default=300, help="calibration samples")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    threads = args.threads
    work = Path(tempfile.mkdtemp(prefix="compress-bench-"))
    print(f"working in {work}", file=sys.stderr)

    ov_run = compress.run(recipe(args.model, [{"type": "quantize", "backend": "openvino"},
                                               {"type": "compile", "target": "x86-cpu-openvino"}],
                                 args.samples, threads), out=work / "runs")
    ort_run = compress.run(recipe(args.model, [{"type": "export"}, {"type": "quantize", "backend": "onnxruntime"},
                                               {"type": "compile", "target": "x86-cpu-onnxruntime"}],
                                  args.samples, threads), out=work / "runs")

    from compress.models import load_model

    parsed = parse_recipe(recipe(args.model, [{"type": "export"}], args.samples, threads))
    reference, spec = load_model(parsed.model, ROOT, parsed.seed)
    calibration = open_dataset(parsed.data.calibration, parsed.data.transform, spec, base_dir=ROOT, seed=0,
                               where="data.calibration")
    evalset = open_dataset(parsed.data.eval, parsed.data.transform, spec, base_dir=ROOT, seed=0, where="data.eval")
    nncf_xml = nncf_direct(reference.module, calibration, args.samples, work / "nncf_direct.xml")

    ov_dir, ort_dir = ov_run.run_dir, ort_run.run_dir
    ov_fp32, ov_int8 = ov_dir / "baselines/openvino/fp32.xml", ov_dir / ov_run.stages[-1]["artifact"]["path"]
    variants = {
        "torch eager fp32": (TorchModel(path=None, module=reference.module), {}),
        "ort fp32": (OnnxModel(path=ort_dir / "baselines/onnxruntime/fp32.onnx"), {}),
        "ort int8 (compress)": (OnnxModel(path=ort_dir / ort_run.stages[-1]["artifact"]["path"]), {}),
        "openvino fp32 (f32 hint)": (OpenVinoModel(path=ov_fp32), {"inference_precision": "f32"}),
        "openvino fp32 (bf16 hint)": (OpenVinoModel(path=ov_fp32), {"inference_precision": "bf16"}),
        "openvino int8 (compress)": (OpenVinoModel(path=ov_int8), {"inference_precision": "f32"}),
        "openvino int8 (nncf direct)": (OpenVinoModel(path=nncf_xml), {"inference_precision": "f32"}),
        "openvino int8 (compress, bf16 hint)": (OpenVinoModel(path=ov_int8), {"inference_precision": "bf16"}),
    }
    feeds = latency_feeds(evalset, 1)
    sessions = {name: open_session(artifact, threads=threads, static_batch=1, **kw)
                for name, (artifact, kw) in variants.items()}
    p50s: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, session in sessions.items():
            p50s[name].append(measure_latency(session, feeds, warmup=5, runs=args.runs)["p50_ms"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    latency = {name: statistics.median(v) for name, v in p50s.items()}

    torch_session = sessions["torch eager fp32"]
    reference_out = [torch_session.run(f)[0] for f, _ in evalset.batches(10)]
    accuracy = {name: agreement(open_session(variants[name][0], threads=threads, **variants[name][1]), reference_out,
                                evalset)
                for name in ("ort int8 (compress)", "openvino int8 (compress)", "openvino int8 (nncf direct)",
                             "openvino int8 (compress, bf16 hint)")}

    machine = machine_info()
    base = latency["torch eager fp32"]
    print(f"\n{args.model}, batch 1, {threads} threads — {machine['cpu']}; ISA: {', '.join(machine['isa'])}")
    print(f"{'variant':38s} {'p50 ms':>9s} {'vs torch':>9s}  agreement with torch FP32")
    for name, ms in latency.items():
        acc = accuracy.get(name)
        extra = f"top-1 {acc['top1_agreement']:.1f}%, cos {acc['cosine']:.4f}" if acc else ""
        print(f"{name:38s} {ms:9.3f} {base / ms:8.2f}x  {extra}")
    ratios = {
        "compress_vs_nncf_direct_latency": latency["openvino int8 (compress)"] / latency["openvino int8 (nncf direct)"],
        "openvino_int8_vs_torch_fp32": base / latency["openvino int8 (compress)"],
        "openvino_int8_vs_openvino_fp32": latency["openvino fp32 (f32 hint)"] / latency["openvino int8 (compress)"],
        "ort_int8_vs_ort_fp32": latency["ort fp32"] / latency["ort int8 (compress)"],
        "ort_int8_vs_torch_fp32": base / latency["ort int8 (compress)"],
    }
    tier = "AMX" if "AMX-INT8" in machine["isa"] else "VNNI" if machine["vnni"] else "AVX2"
    need = {"AMX": 8.0, "VNNI": 4.0, "AVX2": 2.0}[tier]
    checks = {
        "compress within 10% of NNCF direct": ratios["compress_vs_nncf_direct_latency"] <= 1.10,
        "compress at least as accurate as NNCF direct": accuracy["openvino int8 (compress)"]["top1_agreement"]
        >= accuracy["openvino int8 (nncf direct)"]["top1_agreement"] - 1e-9,
        f"OpenVINO INT8 >= {need}x torch FP32 ({tier})": ratios["openvino_int8_vs_torch_fp32"] >= need,
    }
    print()
    for key, value in ratios.items():
        print(f"{key:36s} {value:6.2f}")
    for key, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {key}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": threads, "machine": machine,
                                         "latency_ms": latency, "accuracy": accuracy, "ratios": ratios,
                                         "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
