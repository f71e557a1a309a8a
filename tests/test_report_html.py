"""report.html (self-contained, matplotlib figures inlined as SVG) and `compress inspect --layers`.

The slow tests run real small pipelines on the shipped Fashion-MNIST CNN, trace them layer by layer
and open report.html in headless Chromium (Debian's package; .ci/run installs it): the screenshot must
not be blank and the rendered DOM must hold the plots and the table rows."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import compress
from compress import html
from compress.inspect_layers import _scope_path, module_of
from compress.report import html_page, rows

from conftest import ROOT, cli, fashion_recipe

REPORT = ROOT / "tests" / "data" / "run_report_onnxruntime_int8.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _stored_report() -> dict:
    """A real run's report.json; it predates stage records carrying their config, which export's notes read."""
    report = json.loads(REPORT.read_text())
    report["stages"][0].setdefault("config", {"type": "export", "format": "onnx"})
    return report


def _svgs(page: str) -> int:
    return len(re.findall(r"<svg[\s>]", page))


# ---------------------------------------------------------------- rendering from a report's dicts (fast)
def test_module_names_come_back_from_exporter_scopes():
    assert _scope_path(["layer2", "layer2.0", "downsample", "downsample.0"]) == "layer2.0.downsample.0"
    assert module_of("/layer1/layer1.0/conv2/Conv") == "layer1.0.conv2"
    assert module_of("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert module_of("__module.layer1.0.relu/aten::relu_/Relu") == "layer1.0.relu"
    assert module_of("/layer1/layer1.0/relu_1/Relu", known={"layer1.0.relu"}) == "layer1.0.relu"   # shared module
    assert module_of("n", scopes="['', 'layer1', 'layer1.0', 'layer1.0.conv1']") == "layer1.0.conv1"
    assert module_of("Multiply_123") is None


def test_the_page_is_self_contained_and_has_every_plot_and_row():
    report = _stored_report()
    page = html_page(report)
    assert page.startswith("<!DOCTYPE html>") and _svgs(page) == 2       # accuracy vs latency, vs size
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)        # nothing fetched, not even a local file
    body = page[page.index("<h2>Stages</h2>"):page.index("</table>", page.index("<h2>Stages</h2>"))]
    assert body.count("<tr>") == len(rows(report)) + 1                   # header + the rows of report.md
    assert "Intel(R) Xeon(R) Processor" in page and "onnxruntime</td><td" in page and "1.32.0" in page


def test_details_keys_add_their_plots_whatever_the_stage_type():
    """Calibration candidates, quantization sensitivity, fallback steps, a layer trace and interval gates
    each render from their details keys; the stage's type plays no part."""
    report = _stored_report()
    stage = report["stages"][1]
    stage["type"] = "anything"
    stage["details"].update(
        calibration_candidates=[
            {"name": "minmax", "settings": {}, "metric": {"top1": 93.1}, "latency_ms": 0.15, "size_mb": 0.16,
             "chosen": False},
            {"name": "percentile", "settings": {}, "metric": {"top1": 93.7}, "latency_ms": 0.14, "size_mb": 0.16,
             "chosen": True}],
        sensitivity={"metric": "top1", "samples": 64, "rows": [
            {"node": "/conv/Conv", "module": "features.0.0", "only_this_quantized": 92.0, "only_this_fp32": 93.5}]},
        fallback={"metric": "top1", "max_drop": 0.5, "budget": 3, "baseline": 93.75, "plain_int8": 92.0,
                  "steps": [{"node": "/conv/Conv", "module": "features.0.0", "metric": 93.5, "latency_ms": 0.16}],
                  "kept_fp32": ["/conv/Conv"], "met": True},
        layer_trace={"stage": "quantize", "runtime": "onnxruntime", "fp32": "export", "samples": 8,
                     "layers": [{"tensor": "t", "node": "/conv/Conv", "op": "Conv", "module": "features.0.0",
                                 "sqnr_db": 31.0, "cosine": 0.999, "max_abs": 0.1, "qdq_sqnr_db": None,
                                 "weight_sqnr_db": 40.0}],
                     "cross_runtime": {"reference": "torch", "rows": []}})
    report["gates"][0].update(interval=[-0.4, 0.9], verdict="inconclusive")
    page = html_page(report)
    assert _svgs(page) == 2 + 3    # the two scatters (candidates among their points) + sensitivity, fallback, trace
    assert page.count(">percentile<") == 2 and ">minmax<" in page     # candidates plotted, labelled in both scatters
    for title in ("Quantization sensitivity (quantize)", "Fallback to FP32 (quantize)", "Layer trace (quantize)"):
        assert title in page
    assert '<td class="inconclusive">inconclusive</td>' in page and "[-0.4, 0.9]" in page


def test_pruning_sensitivity_is_a_matplotlib_svg():
    sens = {"metric": "top1", "baseline": 90.0, "samples": 64, "ratios": [0.25, 0.5],
            "layers": [{"layer": "features.0.0", "channels": 32, "drops": {"0.25": 0.5, "0.5": 2.0}},
                       {"layer": "features.1.0", "channels": 32, "drops": {"0.25": 0.1, "0.5": None}}]}
    from compress.report import sensitivity_svg

    text = sensitivity_svg(sens)
    assert text.startswith("<svg") and "matplotlib" in text.lower() and "features.1.0" in text and "n/a" in text


# ---------------------------------------------------------------- real runs, traced and rendered (slow)
def _chromium(page: Path, tmp: Path) -> tuple[np.ndarray, str]:
    """Screenshot (as an RGB array) and rendered DOM of a local page in headless Chromium."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    from PIL import Image

    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1200,2000"]
    shot = tmp / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels, dom


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = compress.run(fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime"}]),
                          out=out)
    return result.run_dir


@pytest.mark.slow
def test_inspect_layers_traces_an_ort_qdq_run_and_report_html_renders_it(ort_run, tmp):
    assert (ort_run / "report.html").is_file() and (ort_run / "report.md").is_file()
    result = cli("inspect", "--layers", ort_run, "--batches", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    trace = json.loads((ort_run / "inspect" / "layers.json").read_text())
    layers = trace["layers"]
    assert trace["stage"] == "quantize" and trace["fp32"] == "export" and trace["samples"] == 4
    # ORT quantizes conv+BN+ReLU at the ReLU's output: that row carries the conv's weight SQNR; torch names
    relus = [r for r in layers if r["op"] == "Relu"]
    assert [r["module"] for r in relus] == [f"features.{i}.2" for i in (0, 1, 3, 4, 6)]
    assert [r["weight_module"] for r in relus] == [f"features.{i}.0" for i in (0, 1, 3, 4, 6)]
    assert all(30 < r["weight_sqnr_db"] < 60 for r in relus)     # INT8 weights (an INT32 bias reads ~80-100 dB)
    assert [r["module"] for r in layers if r["op"] == "Gemm"] == ["classifier"]
    assert all(np.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 10 and r["cosine"] > 0.95 for r in layers), layers
    cross = {r["runtime"]: r for r in trace["cross_runtime"]["rows"]}
    assert trace["cross_runtime"]["reference"] == "torch" and set(cross) == {"onnxruntime", "openvino"}
    assert all(r["cosine"] > 0.9999 and r["max_abs"] < 1e-3 for r in cross.values())
    ranked = sorted(layers, key=lambda r: r["sqnr_db"])                   # the printed table: worst first
    printed = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") > 5]
    assert printed[:3] == [r["module"] or r["node"] for r in ranked[:3]], result.stdout

    page = (ort_run / "report.html").read_text()          # rewritten with the trace
    assert "<h2>Layer trace</h2>" in page and _svgs(page) == 3
    pixels, dom = _chromium(ort_run / "report.html", tmp)
    assert pixels.shape[0] >= 1000 and pixels.std() > 20                  # not a blank page
    report = json.loads((ort_run / "report.json").read_text())
    assert _svgs(dom) == 3                                                # every plot is in the rendered page
    stages = dom[dom.index('id="stages"'):]
    stages = stages[:stages.index("</table>")]
    assert stages.count("<tr>") == len(rows(report)) + 1
    # the plots drew something: the scatters their markers (one PathCollection per group), the layer plot
    # one bar per layer (patches, besides the axes' background)
    latency, size, per_layer = re.findall(r"<svg.*?</svg>", dom, re.S)
    assert all(len(re.findall(r'id="PathCollection_\d+"', svg)) >= 2 for svg in (latency, size))
    assert len(re.findall(r'id="patch_\d+"', per_layer)) >= len(layers) + 1


@pytest.mark.slow
def test_inspect_layers_on_openvino_ir_matches_layers_by_tensor_name(tmp):
    """Bias-free conv -> ReLU layers, which the CPU plugin's fused INT8 kernels break when their outputs
    are added as model outputs; a batch norm OpenVINO folds into conv2 and renames it."""
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}], metric={"primary": "top1_agreement"})
    recipe["model"] = {"source": "python", "factory": str(ROOT / "tests" / "data" / "conv_relu_net.py") + ":ConvReluNet",
                       "input": {"shape": [1, 1, 28, 28]}}
    run_dir = compress.run(recipe, out=tmp / "runs").run_dir
    result = cli("inspect", "--layers", run_dir, "--batches", "1", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    trace = json.loads(result.stdout)
    layers = trace["layers"]
    # torch module names: from OpenVINO's op scopes, and for conv2 (renamed) from its weight shape
    assert [r["module"] for r in layers if r["op"] == "Convolution"] == ["conv1", "conv2", "conv3"]
    assert [r["module"] for r in layers if r["op"] == "Relu"] == ["relu"] * 3
    # every layer of the INT8 model close to FP32 (a broken trace reads zeros: cosine None, SQNR 0)
    assert all(r["cosine"] is not None and r["cosine"] > 0.95 and r["sqnr_db"] > 10 for r in layers), layers
    assert trace["cross_runtime"]["reference"] == "torch"


@pytest.mark.slow
def test_inspect_layers_refuses_a_run_without_int8(ort_run, tmp):
    result = cli("inspect", "--layers", ort_run, "--stage", "export")
    assert result.returncode == 2 and "is not INT8" in result.stderr and "Traceback" not in result.stderr
    result = cli("inspect", "--layers", ort_run, "--stage", "quantise")
    assert result.returncode == 2 and "--stage quantize" in result.stderr
    fp32_only = copy.deepcopy(json.loads((ort_run / "report.json").read_text()))
    fp32_only["stages"] = fp32_only["stages"][:1]
    folder = tmp / "fp32-run"
    shutil.copytree(ort_run, folder)
    (folder / "report.json").write_text(json.dumps(fp32_only))
    result = cli("inspect", "--layers", folder)
    assert result.returncode == 2 and "has no quantized stage" in result.stderr


def test_without_matplotlib_a_run_writes_md_and_json_and_says_how_to_get_html(monkeypatch, tmp):
    from compress import report as report_mod

    report = _stored_report()
    monkeypatch.setattr(html, "available", lambda: False)
    report_mod.write(tmp, report)
    assert (tmp / "report.json").is_file() and not (tmp / "report.html").exists()
    assert "pip install 'compress[report]'" in (tmp / "report.md").read_text()
    monkeypatch.undo()
    report_mod.write(tmp, report)
    assert (tmp / "report.html").is_file() and "compress[report]" not in (tmp / "report.md").read_text()
