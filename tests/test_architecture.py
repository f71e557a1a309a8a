"""The runtime table, handler-owned rules, the stage cache key and the backend-call wrapper.

Most tests here run a handler or a table entry alone on the shipped Fashion-MNIST model, without a
whole pipeline: they are the fast tier's core. One test adds a runtime under a new name with
nothing but table entries and runs it end to end.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import compress
from compress.artifacts import ARTIFACT_TYPES, OnnxModel, OpenVinoModel, TorchModel
from compress.errors import ChainError, CompressError, InputError, RecipeError, StageError, backend_call
from compress.runtimes import RUNTIMES, RuntimeSpec, for_suffix, for_target, register_runtime, runtime_for

from conftest import ROOT, fashion_recipe


# ---------------------------------------------------------------- the table
def test_table_entries_are_found_through_the_class_hierarchy():
    @dataclasses.dataclass
    class Derived(OnnxModel):
        kind = "DerivedOnnxForLookup"

    entry = runtime_for(Derived)
    # nothing registered for Derived: every field comes from OnnxModel's entry
    assert entry.name == "onnxruntime" and entry.format == "onnx" and entry.open is RUNTIMES[OnnxModel].open
    assert entry.count_ops is RUNTIMES[OnnxModel].count_ops
    del ARTIFACT_TYPES["DerivedOnnxForLookup"]


def test_every_builtin_target_resolves_to_a_table_entry_that_runs_here():
    from compress.targets import builtin_targets

    for target in builtin_targets().values():
        entry = for_target(target.runtime, target.format)
        assert entry.compile is not None and entry.open is not None and entry.fp32_baseline is not None
    assert for_suffix(".xml").artifact is OpenVinoModel and for_suffix(".onnx").artifact is OnnxModel
    with pytest.raises(ChainError, match="runtime 'tensorrt' with format 'engine'"):
        for_target("tensorrt", "engine")


def test_a_target_file_naming_an_unknown_runtime_is_exit_2_naming_the_file(tmp):
    target = tmp / "npu.yaml"
    target.write_text(yaml.safe_dump({"name": "npu", "description": "x", "runtime": "magicnpu", "format": "blob",
                                      "quantize_backends": ["openvino"]}))
    recipe = fashion_recipe([{"type": "export"}, {"type": "compile", "target": str(target)}])
    with pytest.raises(RecipeError) as info:
        compress.validate(recipe)
    assert str(target) in str(info.value) and "magicnpu" in str(info.value) and info.value.exit_code == 2


def test_inference_precision_on_an_onnxruntime_target_is_a_plan_time_error():
    recipe = fashion_recipe([{"type": "export"},
                             {"type": "compile", "target": "x86-cpu-onnxruntime", "inference_precision": "bf16"}])
    with pytest.raises(ChainError, match=r"stages\[1\]\.inference_precision.*x86-cpu-onnxruntime"):
        compress.validate(recipe)


def test_a_target_refuses_int8_from_a_backend_it_does_not_list(tmp):
    """ORT's QDQ .onnx and the ORT target's input are the same type; the backend list tells them apart."""
    target = yaml.safe_load((ROOT / "targets" / "x86-cpu-onnxruntime.yaml").read_text())
    target.update(name="ort-needs-other-int8", quantize_backends=["openvino"])
    path = tmp / "t.yaml"
    path.write_text(yaml.safe_dump(target))
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime"},
                             {"type": "compile", "target": str(path)}])
    with pytest.raises(ChainError, match=r"stages\[2\]\.target: stages\[1\] quantizes with backend onnxruntime"):
        compress.validate(recipe)


def test_plan_gates_and_report_name_no_stage_type():
    """Stage rules live in the handlers: the modules that plan, judge and report must not special-case a
    stage by its type name."""
    pattern = re.compile(r"""["'](prune|quantize|qat|export|compile|choose)["']""")
    for module in ("pipeline.py", "gates.py", "report.py", "measure.py", "rundir.py", "inputs.py", "html.py",
                   "inspect_layers.py"):
        text = (ROOT / "compress" / module).read_text()
        assert not pattern.findall(text), (module, pattern.findall(text))


# ---------------------------------------------------------------- a new runtime is table entries only
@dataclasses.dataclass
class RenamedOnnx(OnnxModel):
    """ONNX Runtime under another name: the table entry below is all it takes."""
    runtime = "renamed-ort"
    kind = "RenamedOnnx"


@pytest.mark.slow
def test_a_runtime_added_as_table_entries_only_runs_end_to_end(tmp):
    register_runtime(RuntimeSpec(RenamedOnnx, short="RORT", format="renamed-onnx", suffixes=(".ronnx",),
                                 compiles_from=(OnnxModel,)))
    try:
        target = yaml.safe_load((ROOT / "targets" / "x86-cpu-onnxruntime.yaml").read_text())
        target.update(name="renamed", runtime="renamed-ort", format="renamed-onnx")
        (tmp / "renamed.yaml").write_text(yaml.safe_dump(target))
        recipe = fashion_recipe([{"type": "export"}, {"type": "compile", "target": str(tmp / "renamed.yaml")}])
        recipe["data"]["eval"]["samples"] = 64
        result = compress.run(recipe, out=tmp / "runs")
    finally:
        RUNTIMES.pop(RenamedOnnx)
    final = result.stages[-1]
    assert final["artifact"]["type"] == "RenamedOnnx" and final["runtime"] == "renamed-ort"
    assert "renamed-ort" in result.report["baselines"]                       # its own FP32 baseline, inherited
    assert result.report["baselines"]["renamed-ort"]["artifact"]["type"] == "RenamedOnnx"
    assert final["speedup"]["baseline"] == "fp32-renamed-ort"
    assert final["agreement"]["output"]["top1_agreement"] == 100.0             # FP32 all the way


# ---------------------------------------------------------------- the stage cache key
def _key(recipe: dict, stage: int, tmp: Path) -> str:
    from compress.inputs import open_inputs
    from compress.pipeline import Reporter, Runner, plan
    from compress.rundir import RunFolder

    parsed, base = compress.load(recipe)
    the_plan = plan(parsed, base)
    inputs = open_inputs(parsed, base)
    runner = Runner(the_plan, inputs, RunFolder(parsed, [], {}), Reporter(), cache_root=tmp, use_cache=False,
                    model_id="model")
    return runner._stage_key(the_plan.stages[stage], inputs.reference, "model")


def test_stage_key_holds_what_the_handler_reads_and_no_gate(tmp):
    budget = {"type": "prune", "target": {"latency_ms": 50.0}, "steps": 2}
    base = fashion_recipe([budget, {"type": "compile", "target": "x86-cpu-openvino"}])
    key = _key(base, 0, tmp)
    other_target = fashion_recipe([budget, {"type": "export"}, {"type": "compile", "target": "x86-cpu-onnxruntime"}])
    other_threads = fashion_recipe([budget, {"type": "compile", "target": "x86-cpu-openvino"}],
                                   latency={"threads": 1, "warmup": 2, "runs": 5})
    gated = fashion_recipe([{**budget, "gates": {"max_accuracy_drop": 0.1}},
                            {"type": "compile", "target": "x86-cpu-openvino"}], gates={"min_speedup": 9.0})
    assert _key(other_target, 0, tmp) != key          # the budget is timed on another runtime
    assert _key(other_threads, 0, tmp) != key         # ... with other threads
    assert _key(gated, 0, tmp) == key                 # gates judge; they change nothing
    # a ratio prune reads no runtime: the final target and threads do not matter to it
    ratio = {"type": "prune", "ratio": 0.3}
    assert _key(fashion_recipe([ratio, {"type": "compile", "target": "x86-cpu-openvino"}]), 0, tmp) == \
        _key(fashion_recipe([ratio, {"type": "export"}, {"type": "compile", "target": "x86-cpu-onnxruntime"}],
                            latency={"threads": 1}), 0, tmp)


# ---------------------------------------------------------------- backend_call
def test_backend_call_keeps_the_library_frame_and_maps_settings_errors():
    with pytest.raises(StageError) as info, backend_call("ORT quantization failed", where="stages[1]"):
        {}["missing"]
    assert info.value.render() == "stages[1]: ORT quantization failed: KeyError: 'missing'"
    assert isinstance(info.value.__cause__, KeyError)              # --debug shows where it came from
    with pytest.raises(InputError) as info, backend_call("x", settings_errors=(ValueError,),
                                                         settings_where="stages[0].ignore",
                                                         rejected="NNCF rejected the settings"):
        raise ValueError("node foo not found\nmore")
    assert info.value.render() == "stages[0].ignore: NNCF rejected the settings: node foo not found"
    assert info.value.exit_code == 2 and isinstance(info.value.__cause__, ValueError)
    for passthrough in (KeyboardInterrupt(), InputError("ours")):
        with pytest.raises(type(passthrough)), backend_call("x"):
            raise passthrough


def test_no_backend_wrapper_hides_the_library_frame():
    """Errors raised from library exceptions keep them as __cause__ (`raise ... from exc`)."""
    offenders = []
    for path in (ROOT / "compress").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"raise (StageError|InputError)\(.*from None", line):
                offenders.append(f"{path.name}:{n}")
    assert offenders == []


# ---------------------------------------------------------------- handlers alone, no pipeline
@pytest.fixture(scope="module")
def fashion_parts(fashion_fp32_onnx):
    parsed, inputs, path = fashion_fp32_onnx
    return parsed, inputs, OnnxModel(path=path)


def _context(inputs, out: Path, where: str = "stages[0]", target=None):
    from compress.stages import Resolved, StageContext

    out.mkdir(parents=True, exist_ok=True)
    return StageContext(where=where, spec=inputs.spec, calibration=inputs.calibration, eval=inputs.eval,
                        resolved=Resolved(batch_size=64), out_dir=out, target=target, reference=inputs.reference)


def test_export_handler_alone_checks_parity(fashion_parts, tmp):
    from compress.stages import handler_for

    parsed, inputs, _ = fashion_parts
    ctx = _context(inputs, tmp / "export")
    out = handler_for(parsed.stages[0]).run(parsed.stages[0], inputs.reference, ctx)
    assert isinstance(out, OnnxModel) and out.path.is_file()
    assert ctx.details["parity"]["max_abs_diff"] < 1e-4


def test_quantize_handler_alone_on_onnxruntime(fashion_parts, tmp):
    from compress.recipe import QuantizeConfig
    from compress.runtimes import open_session
    from compress.stages import handler_for

    _, inputs, fp32 = fashion_parts
    cfg = QuantizeConfig(type="quantize", backend="onnxruntime", scheme="s8s8", samples=64)
    ctx = _context(inputs, tmp / "q")
    out = handler_for(cfg).run(cfg, fp32, ctx)
    assert out.precision == "int8" and ctx.details["quantize_ops"] > 5 and ctx.details["scheme"] == "s8s8"
    feeds = next(inputs.eval.input_batches(64))
    got = open_session(out, threads=2).run(feeds)[0].argmax(1)
    want = open_session(fp32, threads=2).run(feeds)[0].argmax(1)
    assert (got == want).mean() > 0.95
    assert handler_for(cfg).gates({"name": "q", "details": ctx.details, "notes": []}) == []
    assert handler_for(cfg).gates({"name": "q", "details": {"quantize_ops": 0}, "notes": ["none"]})[0]["gate"] == \
        "quantized"


def test_compile_handler_alone_for_openvino(fashion_parts, tmp):
    from compress.recipe import CompileConfig
    from compress.stages import handler_for
    from compress.targets import resolve_target

    _, inputs, fp32 = fashion_parts
    target = resolve_target("x86-cpu-openvino", base_dir=ROOT, where="t")
    cfg = CompileConfig(type="compile", target=target.name)
    ctx = _context(inputs, tmp / "c", target=target)
    out = handler_for(cfg).run(cfg, fp32, ctx)
    assert isinstance(out, OpenVinoModel) and out.inference_precision == "f32" and out.files()[1].is_file()
    assert handler_for(cfg).notes({"details": ctx.details}) == ["OpenVINO runs non-INT8 layers in f32"]


def test_restore_round_trips_every_artifact_state(fashion_parts, tmp):
    from compress.runtimes import restore

    _, _inputs, fp32 = fashion_parts
    ir = OpenVinoModel(path=tmp / "m.xml", precision="int8", inference_precision="bf16")
    back = restore(OpenVinoModel, ir.path, ir.state(), ["n"])
    assert (back.precision, back.inference_precision, back.notes) == ("int8", "bf16", ["n"])
    assert restore(TorchModel, tmp / "x.pt", {"precision": "fp32"}, [], base=None) is None   # needs the base model
    assert np.isfinite(runtime_for(fp32).count_ops(fp32, {"Conv"}))


def test_an_error_is_one_line_with_its_yaml_path():
    err = CompressError("boom", where="stages[2].method", hint="Do this.")
    assert err.render() == "stages[2].method: boom. Do this."


def test_artifact_digest_is_the_files_bytes_and_follows_a_rewrite(tmp_path):
    import hashlib

    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_bytes(b"<net/>")
    bin_.write_bytes(b"\x00" * 10)
    art = OpenVinoModel(path=xml)
    assert art.sha256() == hashlib.sha256(b"<net/>" + b"\x00" * 10).hexdigest() == art.sha256()   # memo: same value
    bin_.write_bytes(b"\x01" * 12)
    assert art.sha256() == hashlib.sha256(b"<net/>" + b"\x01" * 12).hexdigest()
