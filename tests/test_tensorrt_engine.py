"""TensorRT INT8 engines: the QDQ rules checker, the profile, the trtexec line, the version manifest, and the
build/run calls, all without TensorRT or a GPU.

build_engine/open_engine run against `RecordingTensorRT`, a RECORDING STAND-IN for the `tensorrt` module
(defined below): it records which API calls are made, in what order and with which arguments, and returns
fakes. It proves that we call the documented TensorRT Python API in the right order with the right flags
(STRONGLY_TYPED requested, EXPLICIT_BATCH never touched, no INT8/FP16 builder flag, the profile's shapes
set, workspace in bytes, the timing cache read and written, DLA settings only when asked). It proves
nothing more: not that TensorRT accepts the model, builds an engine, or runs it correctly. The tests that
need the real thing are marked skipif(no tensorrt).
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import InputError, StageError
from compress.tensorrt.engine import (
    EngineRunner,
    build_engine,
    check_manifest,
    derive_profile,
    device_facts,
    open_engine,
    trtexec_command,
    write_manifest,
)
from compress.tensorrt.rules import OPERATOR_TABLE, Violation, check_qdq, dynamic_axes, supported_ops

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


# ====================================================================================== QDQ models
def qdq_model(*, act_zp=None, act_scale=0.1, act_per_axis=False, w_axis=0, w_scale=None, opset=17,
              scale_dtype=np.float32, bias_int32=False, extra_op=None, batch="batch") -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(W via Q/DQ) [-> extra_op] -> y, names like a torch export."""
    act_zp = np.int8(0) if act_zp is None else act_zp
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_scale = np.full(w.shape[w_axis], 0.01, scale_dtype) if w_scale is None else w_scale
    a_scale = np.full(3, act_scale, scale_dtype) if act_per_axis else np.array(act_scale, scale_dtype)
    a_zp = np.full(3, act_zp, np.asarray(act_zp).dtype) if act_per_axis else np.array(act_zp)
    inits = [numpy_helper.from_array(a_scale, "x_scale"), numpy_helper.from_array(a_zp, "x_zp"),
             numpy_helper.from_array(w_scale, "w_scale"), numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
             numpy_helper.from_array(w, "features.0.weight")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="/features/0/Conv_quant", axis=1),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="/features/0/Conv_dequant", axis=1),
             helper.make_node("QuantizeLinear", ["features.0.weight", "w_scale", "w_zp"], ["wq"],
                              name="/features/0/weight_quant", axis=w_axis),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wdq"],
                              name="/features/0/weight_dequant", axis=w_axis)]
    conv_in = ["xdq", "wdq"]
    if bias_int32:
        inits += [numpy_helper.from_array(np.arange(4, dtype=np.int32), "features.0.bias_quantized"),
                  numpy_helper.from_array(np.full(4, 0.001, np.float32), "b_scale"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["features.0.bias_quantized", "b_scale", "b_zp"], ["bdq"],
                                      name="/features/0/bias_dequant", axis=0))
        conv_in.append("bdq")
    nodes.append(helper.make_node("Conv", conv_in, ["conv"], name="/features/0/Conv"))
    out = "conv"
    if extra_op is not None:
        domain = extra_op.split(".")[0] if "." in extra_op else ""
        nodes.append(helper.make_node(extra_op.split(".")[-1], ["conv"], ["extra"], name="/head/Extra", domain=domain))
        out = "extra"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def found(model, **kw) -> list[tuple[str, str, str]]:
    return sorted((v.rule, v.node, v.op) for v in check_qdq(model, **kw))


# ====================================================================================== rules
def test_clean_symmetric_qdq_model_passes_for_every_tensorrt_line():
    model = qdq_model()
    onnx.checker.check_model(model)
    assert check_qdq(model) == []
    for spec in (">=10.3,<11", "10.3", ">=10.14,<11", "11.1", ">=11,<12"):
        assert check_qdq(model, tensorrt=spec) == [], spec


def test_uint8_asymmetric_zero_point_names_node_and_values():
    [v] = check_qdq(qdq_model(act_zp=np.uint8(128)))[:1]
    assert (v.node, v.op, v.rule) == ("/features/0/Conv_quant", "QuantizeLinear", "zero-point")
    assert v.message == ("node /features/0/Conv_quant: QuantizeLinear zero-point is uint8 128; "
                         "TensorRT needs int8 zero-point 0")
    # both the Q and its DQ read the zero point; nothing else is flagged
    assert found(qdq_model(act_zp=np.uint8(128))) == [
        ("zero-point", "/features/0/Conv_dequant", "DequantizeLinear"),
        ("zero-point", "/features/0/Conv_quant", "QuantizeLinear")]
    # int8 but not zero: asymmetric, also refused
    assert {v.rule for v in check_qdq(qdq_model(act_zp=np.int8(3)))} == {"zero-point"}


def test_per_channel_activation_quantizer_is_refused():
    rules = {(v.rule, v.node) for v in check_qdq(qdq_model(act_per_axis=True))}
    assert ("per-axis-activation", "/features/0/Conv_quant") in rules
    msg = next(v.message for v in check_qdq(qdq_model(act_per_axis=True)) if v.rule == "per-axis-activation")
    assert msg.startswith("node /features/0/Conv_quant: QuantizeLinear quantizes activation 'x' per axis")


def test_zero_and_negative_scales_are_refused():
    assert found(qdq_model(act_scale=0.0)) == [
        ("scale-positive", "/features/0/Conv_dequant", "DequantizeLinear"),
        ("scale-positive", "/features/0/Conv_quant", "QuantizeLinear")]
    ws = np.array([0.01, -0.01, 0.01, 0.01], np.float32)
    assert {(v.rule, v.node) for v in check_qdq(qdq_model(w_scale=ws))} == {
        ("scale-positive", "/features/0/weight_quant"), ("scale-positive", "/features/0/weight_dequant")}


def test_conv_weight_quantized_on_the_wrong_axis():
    assert {v.rule for v in check_qdq(qdq_model(w_axis=1))} == {"per-axis-axis"}
    v = check_qdq(qdq_model(w_axis=1))[0]
    assert "output-channel axis 0" in v.message and v.node.startswith("/features/0/weight_")


def test_op_unsupported_by_the_chosen_tensorrt_is_named():
    model = qdq_model(extra_op="Swish")          # Swish: in the 11.1 table only, not in 10.3 ... 10.16
    assert check_qdq(model, tensorrt="11.1") == []
    [v] = check_qdq(model, tensorrt=">=10.3,<11")
    assert (v.rule, v.node, v.op) == ("unsupported-op", "/head/Extra", "Swish")
    assert v.message.startswith("node /head/Extra: Swish is not supported by the ONNX parser of every TensorRT "
                                ">=10.3,<11")
    # an op outside ai.onnx needs a plugin
    [v] = check_qdq(qdq_model(extra_op="com.microsoft.FusedGelu"), tensorrt="11.1")
    assert (v.rule, v.node, v.op) == ("plugin-op", "/head/Extra", "FusedGelu")


def test_int32_bias_dequantize_is_refused_once():
    [v] = check_qdq(qdq_model(bias_int32=True))
    assert (v.rule, v.node, v.op) == ("dq-input-dtype", "/features/0/bias_dequant", "DequantizeLinear")
    assert "int32 tensor (a quantized bias)" in v.message and "keep the bias in float" in v.message


def test_opset_rules_low_fp16_and_above_the_parser():
    [v] = check_qdq(qdq_model(opset=12))
    assert (v.rule, v.node, v.op) == ("opset", "/features/0/Conv_quant", "QuantizeLinear")
    assert "opset >= 13" in v.message and "opset 12" in v.message
    assert {v.rule for v in check_qdq(qdq_model(scale_dtype=np.float16))} == {"opset"}
    assert check_qdq(qdq_model(scale_dtype=np.float16, opset=19)) == []
    # 10.3's parser takes opset <= 20 (onnx-tensorrt operators.md), 11.1's <= 24
    model = qdq_model(opset=21)
    assert [(v.rule, v.node) for v in check_qdq(model, tensorrt="10.3")] == [("opset-max", "<model>")]
    assert check_qdq(model, tensorrt="11.1") == []


def test_violation_is_a_frozen_record():
    v = Violation("n", "Conv", "r", "node n: Conv broke r")
    with pytest.raises(AttributeError):
        v.node = "m"
    assert str(v) == "node n: Conv broke r"


def test_supported_ops_intersects_the_range_and_covers_missing_versions_from_below():
    jp6 = supported_ops(">=10.3,<11")
    assert jp6.versions == ("10.3", "10.14", "10.15", "10.16") and jp6.max_opset == 20
    assert jp6.ops == OPERATOR_TABLE["10.3"][0] and "Attention" not in jp6.ops and "Conv" in jp6.ops
    # 10.13 (JetPack 7) is not in the table: the entry below it (10.3) stands in, conservatively
    assert supported_ops("10.13.2").versions == ("10.3",)
    assert supported_ops(">=10.14").ops == OPERATOR_TABLE["10.14"][0]
    assert supported_ops(">=11,<12").versions == ("10.16", "11.1")
    assert "Swish" in supported_ops("11.1").ops and "Swish" not in supported_ops(">=11,<12").ops
    with pytest.raises(InputError, match=r"no ONNX-TensorRT operator table covers TensorRT 8\.6"):
        supported_ops("8.6")
    with pytest.raises(InputError, match="pip-style range"):
        supported_ops("newest")


def test_dynamic_axes_lists_fixed_and_symbolic_dims():
    model = qdq_model()
    assert dynamic_axes(model) == {"x": ["batch", 3, 8, 8]}
    model.graph.input[0].type.tensor_type.shape.dim[2].Clear()
    assert dynamic_axes(model) == {"x": ["batch", 3, None, 8]}


# ====================================================================================== profile
def test_profile_from_a_dynamic_batch_only():
    assert derive_profile({"x": ["batch", 3, 224, 224]}, batch=8, max_batch=32) == {
        "x": ([1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224])}
    # a fixed batch is copied, an unnamed dynamic batch is still the batch
    assert derive_profile({"a": [2, 5], "b": [None, 7]}, batch=4, max_batch=4, shapes=None) == {
        "a": ([2, 5], [2, 5], [2, 5]), "b": ([1, 7], [4, 7], [4, 7])}


def test_profile_needs_shapes_for_any_other_dynamic_axis():
    with pytest.raises(InputError) as info:
        derive_profile({"x": ["batch", 3, "height", "width"]}, batch=1, max_batch=8)
    assert str(info.value) == "dynamic axis 2 ('height') of input 'x' has no profile: give targets' tensorrt.shapes"
    shapes = {"x": {"min": [1, 3, 128, 128], "opt": [4, 3, 224, 224], "max": [8, 3, 512, 512]}}
    assert derive_profile({"x": ["batch", 3, "height", "width"]}, batch=1, max_batch=8, shapes=shapes) == {
        "x": ([1, 3, 128, 128], [4, 3, 224, 224], [8, 3, 512, 512])}


def test_profile_refuses_min_above_opt_and_shapes_that_break_fixed_dims():
    bad = {"x": {"min": [1, 3, 256, 256], "opt": [1, 3, 224, 224], "max": [1, 3, 512, 512]}}
    with pytest.raises(InputError, match=r"input 'x' needs 1 <= min <= opt <= max.*axis 2 has min 256, opt 224"):
        derive_profile({"x": [1, 3, "h", "w"]}, batch=1, max_batch=1, shapes=bad)
    with pytest.raises(InputError, match=r"sets fixed axis 1 to 4; the model fixes it at 3"):
        derive_profile({"x": [1, 3, "h"]}, batch=1, max_batch=1,
                       shapes={"x": {"min": [1, 4, 8], "opt": [1, 4, 8], "max": [1, 4, 8]}})
    with pytest.raises(InputError, match="1 <= batch <= max_batch"):
        derive_profile({"x": ["b", 3]}, batch=16, max_batch=8)
    with pytest.raises(InputError, match="names input 'y', which the model does not have"):
        derive_profile({"x": ["b", 3]}, batch=1, max_batch=8, shapes={"y": {"min": [1], "opt": [1], "max": [1]}})


# ====================================================================================== trtexec
def test_trtexec_command_one_input():
    profile = derive_profile({"input": ["batch", 3, 224, 224]}, batch=8, max_batch=32)
    assert trtexec_command("out/resnet18.int8.onnx", "out/resnet18.int8.plan", profile, workspace_mb=1024,
                           timing_cache="out/timing.cache") == (
        "trtexec --onnx=out/resnet18.int8.onnx --stronglyTyped --minShapes=input:1x3x224x224 "
        "--optShapes=input:8x3x224x224 --maxShapes=input:32x3x224x224 --memPoolSize=workspace:1024M "
        "--saveEngine=out/resnet18.int8.plan --timingCacheFile=out/timing.cache")


def test_trtexec_command_two_inputs_quoted_paths_and_dla():
    profile = {"image": ([1, 3, 64, 64], [2, 3, 64, 64], [4, 3, 64, 64]), "mask": ([1, 64], [2, 64], [4, 64])}
    assert trtexec_command("my models/m.onnx", "m.plan", profile, workspace_mb=256, dla_core=0) == (
        "trtexec --onnx='my models/m.onnx' --stronglyTyped --minShapes=image:1x3x64x64,mask:1x64 "
        "--optShapes=image:2x3x64x64,mask:2x64 --maxShapes=image:4x3x64x64,mask:4x64 "
        "--memPoolSize=workspace:256M --saveEngine=m.plan --useDLACore=0 --allowGPUFallback")


# ====================================================================================== manifest
FACTS = {"tensorrt": "10.3.0.30", "machine": "aarch64", "cuda_torch": "12.6", "cuda_runtime": 12060,
         "cudnn": 90300, "gpu_name": "Orin", "compute_capability": "8.7", "gpu_memory_mib": 62841,
         "l4t": "36.4.3", "jetpack": "6.2-b77"}


def test_manifest_written_atomically_and_matching_device_passes(tmp_path):
    path = tmp_path / "model.plan.json"
    written = write_manifest(path, facts=FACTS, onnx_sha256="ab" * 32, profile={"x": ([1, 3], [8, 3], [32, 3])},
                             precision="int8", dla_core=None, gates={"max_accuracy_drop": 1.0},
                             build={"build_seconds": 12.5})
    manifest = json.loads(path.read_text())
    assert manifest == written and manifest["format"] == "compress-tensorrt-manifest/1"
    assert manifest["device"] == FACTS and manifest["profile"] == {"x": [[1, 3], [8, 3], [32, 3]]}
    assert [p.name for p in tmp_path.iterdir()] == ["model.plan.json"]          # no temp file left
    check_manifest(manifest, FACTS)
    check_manifest(manifest, {**FACTS, "tensorrt": "10.3.0"})                    # major.minor.patch compared


def test_manifest_mismatch_names_both_values_and_the_rebuild():
    manifest = {"device": FACTS}
    with pytest.raises(InputError) as info:
        check_manifest(manifest, {**FACTS, "tensorrt": "10.3.1"})
    assert str(info.value) == (
        "the engine was built with TensorRT 10.3.0 but this device has TensorRT 10.3.1; TensorRT engines are "
        "not portable across TensorRT versions or GPUs, so rebuild it with `compress build` on this device")
    with pytest.raises(InputError, match=r"GPU compute capability 8\.7 but this device has GPU compute capability 8\.9"):
        check_manifest(manifest, {**FACTS, "compute_capability": "8.9"})
    with pytest.raises(InputError, match="built with GPU Orin but this device has GPU NVIDIA H100"):
        check_manifest(manifest, {**FACTS, "gpu_name": "NVIDIA H100"})
    with pytest.raises(InputError, match="this device has TensorRT none"):
        check_manifest(manifest, {**FACTS, "tensorrt": None})


def test_device_facts_never_crash_and_hold_no_hostname():
    import socket

    facts = device_facts()
    for key in ("tensorrt", "cuda_torch", "cuda_runtime", "cudnn", "gpu_name", "compute_capability", "l4t", "jetpack"):
        assert key in facts
    if not HAVE_TENSORRT:
        assert facts["tensorrt"] is None
    assert device_facts(RecordingTensorRT.v10())["tensorrt"] == "10.3.0"
    assert socket.gethostname() not in json.dumps(facts)


# ====================================================================================== the recording stand-in
class RecordingEnum:
    """A TensorRT enum namespace that records every member read, and raises AttributeError for a member
    the imitated version does not have (as TensorRT 11 does for EXPLICIT_BATCH or BuilderFlag.INT8)."""

    def __init__(self, rec: RecordingTensorRT, kind: str, members: dict):
        self.__dict__.update(_rec=rec, _kind=kind, _members=members)

    def __getattr__(self, name):
        self._rec.reads.append(f"{self._kind}.{name}")
        if name not in self._members:
            raise AttributeError(f"type object '{self._kind}' has no attribute '{name}'")
        return self._members[name]


class _Recorded:
    """Base of the fakes: attribute writes are recorded as calls ("BuilderConfig.DLA_core=", value)."""

    _api = "?"

    def __init__(self, rec: RecordingTensorRT):
        object.__setattr__(self, "_rec", rec)

    def __setattr__(self, name, value):
        self._rec.call(f"{self._api}.{name}=", value)
        object.__setattr__(self, name, value)


class FakeNetwork(_Recorded):
    _api = "INetworkDefinition"

    def __init__(self, rec, flags):
        super().__init__(rec)
        object.__setattr__(self, "flags", flags)

    @property
    def num_inputs(self):
        return len(self._rec.net_inputs)

    def get_input(self, i):
        name, shape = self._rec.net_inputs[i]
        return type("ITensor", (), {"name": name, "shape": shape})()

    @property
    def num_layers(self):
        return len(self._rec.layers)

    def get_layer(self, i):
        return type("ILayer", (), {"name": self._rec.layers[i]})()


class FakeParserError:
    def __init__(self, node, op, desc):
        self._node, self._op, self._desc = node, op, desc

    def desc(self):
        return self._desc

    def node(self):
        return 3

    def node_name(self):
        return self._node

    def node_operator(self):
        return self._op


class FakeParser(_Recorded):
    _api = "OnnxParser"

    def parse_from_file(self, path):
        self._rec.call("OnnxParser.parse_from_file", path)
        return not self._rec.parser_errors

    @property
    def num_errors(self):
        return len(self._rec.parser_errors)

    def get_error(self, i):
        return FakeParserError(*self._rec.parser_errors[i])


class FakeTimingCache(_Recorded):
    _api = "ITimingCache"

    def __init__(self, rec, blob):
        super().__init__(rec)
        object.__setattr__(self, "blob", bytes(blob))

    def serialize(self):
        self._rec.call("ITimingCache.serialize")
        return b"TIMING-CACHE-v2:" + self.blob


class FakeProfile(_Recorded):
    _api = "IOptimizationProfile"

    def set_shape(self, name, lo, opt, hi):
        self._rec.call("IOptimizationProfile.set_shape", name, lo, opt, hi)


class FakeConfig(_Recorded):
    _api = "IBuilderConfig"

    def set_memory_pool_limit(self, pool, size):
        self._rec.call("IBuilderConfig.set_memory_pool_limit", pool, size)

    def add_optimization_profile(self, profile):
        self._rec.call("IBuilderConfig.add_optimization_profile")
        return 0

    def create_timing_cache(self, blob):
        self._rec.call("IBuilderConfig.create_timing_cache", bytes(blob))
        return FakeTimingCache(self._rec, blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        self._rec.call("IBuilderConfig.set_timing_cache", cache.blob, ignore_mismatch)
        object.__setattr__(self, "_cache", cache)
        return not cache.blob.startswith(b"OTHER-GPU")

    def get_timing_cache(self):
        self._rec.call("IBuilderConfig.get_timing_cache")
        return self._cache

    def set_flag(self, flag):
        self._rec.call("IBuilderConfig.set_flag", flag)

    def can_run_on_DLA(self, layer):
        self._rec.call("IBuilderConfig.can_run_on_DLA", layer.name)
        return layer.name in self._rec.dla_capable


class FakeBuilder(_Recorded):
    _api = "Builder"

    @property
    def num_DLA_cores(self):
        return self._rec.dla_cores

    def create_network(self, flags=0):
        self._rec.call("Builder.create_network", flags)
        return FakeNetwork(self._rec, flags)

    def create_builder_config(self):
        self._rec.call("Builder.create_builder_config")
        return FakeConfig(self._rec)

    def create_optimization_profile(self):
        self._rec.call("Builder.create_optimization_profile")
        return FakeProfile(self._rec)

    def build_serialized_network(self, network, config):
        self._rec.call("Builder.build_serialized_network")
        return None if self._rec.build_fails else b"SERIALIZED-ENGINE"


class FakeContext(_Recorded):
    _api = "IExecutionContext"

    def set_input_shape(self, name, shape):
        self._rec.call("IExecutionContext.set_input_shape", name, tuple(shape))
        object.__setattr__(self, "_batch", shape[0])
        return True

    def get_tensor_shape(self, name):
        self._rec.call("IExecutionContext.get_tensor_shape", name)
        return (self._batch, *self._rec.engine_outputs[name])

    def set_tensor_address(self, name, address):
        self._rec.call("IExecutionContext.set_tensor_address", name)
        self._rec.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        self._rec.call("IExecutionContext.execute_async_v3", stream_handle)
        if stream_handle == 0:   # host memory (device="cpu"): write k+1 into output k, read back by the runner
            import ctypes

            for k, name in enumerate(self._rec.engine_outputs):
                n = self._batch * int(np.prod(self._rec.engine_outputs[name]))
                np.ctypeslib.as_array((ctypes.c_float * n).from_address(self._rec.addresses[name]))[:] = k + 1
        return True


class FakeEngine(_Recorded):
    _api = "ICudaEngine"

    def _names(self):
        return [n for n, _ in self._rec.net_inputs] + list(self._rec.engine_outputs)

    @property
    def num_io_tensors(self):
        return len(self._names())

    def get_tensor_name(self, i):
        return self._names()[i]

    def get_tensor_mode(self, name):
        return "TensorIOMode.INPUT" if name in dict(self._rec.net_inputs) else "TensorIOMode.OUTPUT"

    def get_tensor_dtype(self, name):
        return "DataType.FLOAT"

    def create_execution_context(self):
        self._rec.call("ICudaEngine.create_execution_context")
        return FakeContext(self._rec)


class FakeRuntime(_Recorded):
    _api = "Runtime"

    def deserialize_cuda_engine(self, data):
        self._rec.call("Runtime.deserialize_cuda_engine", bytes(data))
        return None if bytes(data).startswith(b"BUILT-ELSEWHERE") else FakeEngine(self._rec)


class RecordingTensorRT:
    """RECORDING STAND-IN for the `tensorrt` module (see the module docstring): `calls` lists every API call
    as (name, *args) in order, `reads` every enum member read. `v10()` imitates TensorRT 10.x (has
    EXPLICIT_BATCH and the precision BuilderFlags, which must never be read), `v11()` TensorRT 11.x (neither
    exists: reading one raises AttributeError, as the real module does)."""

    def __init__(self, version, *, network_flags, builder_flags, dla_cores=0):
        self.__version__ = version
        self.calls: list[tuple] = []
        self.reads: list[str] = []
        self.net_inputs = [("x", (-1, 3, 8, 8))]
        self.engine_outputs = {"logits": (10,), "boxes": (4,)}
        self.layers = ["/features/0/Conv", "/features/1/Relu", "/head/NonMaxSuppression"]
        self.dla_capable = {"/features/0/Conv", "/features/1/Relu"}
        self.dla_cores = dla_cores
        self.parser_errors: list[tuple[str, str, str]] = []
        self.build_fails = False
        self.addresses: dict[str, int] = {}
        self.NetworkDefinitionCreationFlag = RecordingEnum(self, "NetworkDefinitionCreationFlag", network_flags)
        self.BuilderFlag = RecordingEnum(self, "BuilderFlag", {f: f"BuilderFlag.{f}" for f in builder_flags})
        self.MemoryPoolType = RecordingEnum(self, "MemoryPoolType", {"WORKSPACE": "MemoryPoolType.WORKSPACE"})
        self.DeviceType = RecordingEnum(self, "DeviceType", {"GPU": "DeviceType.GPU", "DLA": "DeviceType.DLA"})
        self.TensorIOMode = RecordingEnum(self, "TensorIOMode", {"INPUT": "TensorIOMode.INPUT",
                                                                 "OUTPUT": "TensorIOMode.OUTPUT"})
        rec = self

        class Logger:
            WARNING, INFO, VERBOSE = "Logger.WARNING", "Logger.INFO", "Logger.VERBOSE"

            def __init__(self, severity):
                rec.call("Logger", severity)

        self.Logger = Logger

    @classmethod
    def v10(cls, **kw) -> RecordingTensorRT:
        return cls("10.3.0", network_flags={"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
                   builder_flags=("FP16", "BF16", "INT8", "FP8", "GPU_FALLBACK", "REFIT", "STRICT_NANS"), **kw)

    @classmethod
    def v11(cls, *, strongly_typed_flag=True, **kw) -> RecordingTensorRT:
        flags = {"PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3}
        if strongly_typed_flag:
            flags["STRONGLY_TYPED"] = 1   # deprecated and ignored in 11.x, kept for API compatibility
        return cls("11.1.0", network_flags=flags, builder_flags=("GPU_FALLBACK", "REFIT", "STRICT_NANS"), **kw)

    def call(self, name, *args):
        self.calls.append((name, *args))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def args(self, name) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]

    def Builder(self, logger):
        self.call("Builder")
        return FakeBuilder(self)

    def OnnxParser(self, network, logger):
        self.call("OnnxParser")
        return FakeParser(self)

    def Runtime(self, logger):
        self.call("Runtime")
        return FakeRuntime(self)

    @staticmethod
    def nptype(dtype):
        return {"DataType.FLOAT": np.float32}[dtype]


# ====================================================================================== build/open against the stand-in
BUILD_CALLS = [
    "Logger", "Builder", "Builder.create_network", "OnnxParser", "OnnxParser.parse_from_file",
    "Builder.create_builder_config", "IBuilderConfig.set_memory_pool_limit", "Builder.create_optimization_profile",
    "IOptimizationProfile.set_shape", "IBuilderConfig.add_optimization_profile", "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache", "Builder.build_serialized_network", "IBuilderConfig.get_timing_cache",
    "ITimingCache.serialize"]


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.int8.onnx"
    onnx.save(qdq_model(), str(path))
    return path


def _profile():
    return derive_profile({"x": ["batch", 3, 8, 8]}, batch=4, max_batch=16)


@pytest.mark.parametrize("make", [RecordingTensorRT.v10, RecordingTensorRT.v11], ids=["tensorrt-10.x", "tensorrt-11.x"])
def test_build_engine_makes_the_documented_calls_in_order(make, onnx_file, tmp_path):
    trt = make()
    (tmp_path / "timing.cache").write_bytes(b"CACHE-FROM-LAST-BUILD")
    logs: list[str] = []
    result = build_engine(trt, onnx_file, tmp_path / "model.plan", profile=_profile(), workspace_mb=512, log=logs.append)

    assert trt.names() == BUILD_CALLS
    assert trt.args("Builder.create_network") == [(1 << 1,)]                 # 1 << STRONGLY_TYPED
    assert trt.args("OnnxParser.parse_from_file") == [(str(onnx_file),)]
    assert trt.args("IBuilderConfig.set_memory_pool_limit") == [("MemoryPoolType.WORKSPACE", 512 * 2**20)]
    assert trt.args("IOptimizationProfile.set_shape") == [("x", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))]
    # precision comes from the Q/DQ graph: no builder flag at all, EXPLICIT_BATCH never touched
    assert trt.args("IBuilderConfig.set_flag") == []
    assert not [r for r in trt.reads if r.startswith("BuilderFlag.") or r.endswith("EXPLICIT_BATCH")]
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in trt.reads
    # no DLA settings unless asked
    assert not [c for c in trt.names() if "DLA" in c or "default_device_type" in c] and result["dla"] is None
    # the timing cache beside the engine is loaded, kept (no mismatch allowed) and written back
    assert trt.args("IBuilderConfig.create_timing_cache") == [(b"CACHE-FROM-LAST-BUILD",)]
    assert trt.args("IBuilderConfig.set_timing_cache") == [(b"CACHE-FROM-LAST-BUILD", False)]
    assert (tmp_path / "timing.cache").read_bytes() == b"TIMING-CACHE-v2:CACHE-FROM-LAST-BUILD"
    assert result["timing_cache"] == {"path": str(tmp_path / "timing.cache"), "loaded_bytes": 21, "reused": True,
                                      "saved_bytes": 37}
    # the engine is written under its final name, no temp file left
    assert (tmp_path / "model.plan").read_bytes() == b"SERIALIZED-ENGINE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.plan", "timing.cache"]
    assert result["layers"] == 3 and result["engine_bytes"] == 17 and result["tensorrt"] == trt.__version__
    assert result["strongly_typed_flag"] is True and result["workspace_bytes"] == 512 * 2**20
    assert result["trtexec"] == trtexec_command(onnx_file, tmp_path / "model.plan", _profile(), workspace_mb=512,
                                                timing_cache=tmp_path / "timing.cache")
    assert logs[-1].startswith(f"TensorRT {trt.__version__}: building model.plan from model.int8.onnx (strongly typed")


def test_build_engine_on_a_tensorrt_without_the_strongly_typed_flag(onnx_file, tmp_path):
    trt = RecordingTensorRT.v11(strongly_typed_flag=False)
    result = build_engine(trt, onnx_file, tmp_path / "m.plan", profile=_profile(), workspace_mb=64, log=lambda _: None)
    assert trt.args("Builder.create_network") == [(0,)] and result["strongly_typed_flag"] is False
    # no cache file yet: an empty cache is created, then saved
    assert trt.args("IBuilderConfig.create_timing_cache") == [(b"",)]
    assert (tmp_path / "timing.cache").read_bytes() == b"TIMING-CACHE-v2:" and result["timing_cache"]["reused"] is False


def test_dla_settings_and_gpu_fallback_only_when_asked(onnx_file, tmp_path):
    trt = RecordingTensorRT.v10(dla_cores=2)
    logs: list[str] = []
    static = {"x": ([4, 3, 8, 8], [4, 3, 8, 8], [4, 3, 8, 8])}
    result = build_engine(trt, onnx_file, tmp_path / "m.plan", profile=static, workspace_mb=64, dla_core=1,
                          timing_cache_path=tmp_path / "dla.cache", log=logs.append)
    assert ("IBuilderConfig.default_device_type=", "DeviceType.DLA") in trt.calls
    assert ("IBuilderConfig.DLA_core=", 1) in trt.calls
    assert trt.args("IBuilderConfig.set_flag") == [("BuilderFlag.GPU_FALLBACK",)]
    assert trt.names().index("IBuilderConfig.set_flag") < trt.names().index("Builder.build_serialized_network")
    assert result["dla"] == {"core": 1, "determined": True, "method": "IBuilderConfig.can_run_on_DLA per network layer",
                             "layers_on_dla": 2, "layers_on_gpu": 1,
                             "gpu_fallback_layers": ["/head/NonMaxSuppression"]}
    assert ("TensorRT: GPU fallback: 1 of 3 layers cannot run on DLA core 1 and run on the GPU "
            "(/head/NonMaxSuppression)") in logs                                # reported, never silent
    assert result["trtexec"].endswith("--timingCacheFile=" + str(tmp_path / "dla.cache") + " --useDLACore=1 --allowGPUFallback")
    with pytest.raises(InputError, match=r"dla_core 2 does not exist: this device has DLA cores 0\.\.1"):
        build_engine(RecordingTensorRT.v10(dla_cores=2), onnx_file, tmp_path / "n.plan", profile=static,
                     workspace_mb=64, dla_core=2, log=lambda _: None)
    with pytest.raises(InputError, match=r"dla_core 0 was asked for, but this device and TensorRT 11\.1\.0 have no DLA"):
        build_engine(RecordingTensorRT.v11(), onnx_file, tmp_path / "n.plan", profile=static, workspace_mb=64,
                     dla_core=0, log=lambda _: None)
    with pytest.raises(InputError, match=r"DLA build needs a static profile .* input 'x' has min 1x3x8x8 and max 16x3x8x8"):
        build_engine(RecordingTensorRT.v10(dla_cores=2), onnx_file, tmp_path / "n.plan", profile=_profile(),
                     workspace_mb=64, dla_core=0, log=lambda _: None)


def test_parser_errors_become_one_input_error_naming_the_node(onnx_file, tmp_path):
    trt = RecordingTensorRT.v10()
    trt.parser_errors = [("/head/Extra", "Swish", "No importer registered for op: Swish."),
                         ("", "", "Failed to parse the model")]
    with pytest.raises(InputError) as info:
        build_engine(trt, onnx_file, tmp_path / "m.plan", profile=_profile(), workspace_mb=64, log=lambda _: None)
    assert str(info.value) == ("TensorRT 10.3.0's ONNX parser rejected model.int8.onnx: node /head/Extra (Swish): "
                               "No importer registered for op: Swish.; node #3: Failed to parse the model")
    assert "Builder.build_serialized_network" not in trt.names() and not (tmp_path / "m.plan").exists()


def test_a_failed_build_is_a_stage_error_and_writes_nothing(onnx_file, tmp_path):
    trt = RecordingTensorRT.v10()
    trt.build_fails = True
    with pytest.raises(StageError, match="build_serialized_network returned None"):
        build_engine(trt, onnx_file, tmp_path / "m.plan", profile=_profile(), workspace_mb=64, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]


def test_a_timing_cache_from_another_device_is_replaced_not_mixed(onnx_file, tmp_path):
    trt = RecordingTensorRT.v10()
    (tmp_path / "timing.cache").write_bytes(b"OTHER-GPU-CACHE")
    logs: list[str] = []
    result = build_engine(trt, onnx_file, tmp_path / "m.plan", profile=_profile(), workspace_mb=64, log=logs.append)
    assert trt.args("IBuilderConfig.set_timing_cache") == [(b"OTHER-GPU-CACHE", False), (b"", False)]
    assert result["timing_cache"]["reused"] is False and "does not match this TensorRT/GPU" in logs[0]
    assert (tmp_path / "timing.cache").read_bytes() == b"TIMING-CACHE-v2:"


def test_profile_must_cover_exactly_the_network_inputs(onnx_file, tmp_path):
    trt = RecordingTensorRT.v10()
    trt.net_inputs = [("x", (-1, 3, 8, 8)), ("mask", (-1, 8))]
    with pytest.raises(InputError, match="no shapes for network input 'mask'"):
        build_engine(trt, onnx_file, tmp_path / "m.plan", profile=_profile(), workspace_mb=64, log=lambda _: None)


def test_open_engine_binds_every_tensor_and_returns_outputs_in_engine_order(tmp_path):
    trt = RecordingTensorRT.v10()
    (tmp_path / "m.plan").write_bytes(b"SERIALIZED-ENGINE")
    runner = open_engine(trt, tmp_path / "m.plan", device="cpu")   # host memory: the stand-in only
    assert isinstance(runner, EngineRunner) and runner.inputs == ["x"] and runner.outputs == ["logits", "boxes"]
    logits, boxes = runner({"x": np.ones((2, 3, 8, 8), np.float64)})
    assert logits.shape == (2, 10) and boxes.shape == (2, 4) and logits.dtype == np.float32
    assert (logits == 1).all() and (boxes == 2).all()                 # read back from the addresses given
    assert trt.names() == [
        "Logger", "Runtime", "Runtime.deserialize_cuda_engine", "ICudaEngine.create_execution_context",
        "IExecutionContext.set_input_shape", "IExecutionContext.get_tensor_shape", "IExecutionContext.get_tensor_shape",
        "IExecutionContext.set_tensor_address", "IExecutionContext.set_tensor_address",
        "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3"]
    assert trt.args("IExecutionContext.set_input_shape") == [("x", (2, 3, 8, 8))]
    assert sorted(a[0] for a in trt.args("IExecutionContext.set_tensor_address")) == ["boxes", "logits", "x"]
    with pytest.raises(InputError, match="the engine needs input 'x'"):
        runner({"y": np.ones((1, 3, 8, 8), np.float32)})


def test_open_engine_built_elsewhere_is_a_stage_error(tmp_path):
    (tmp_path / "m.plan").write_bytes(b"BUILT-ELSEWHERE")
    with pytest.raises(StageError, match=r"engine m\.plan does not match this TensorRT/GPU"):
        open_engine(RecordingTensorRT.v10(), tmp_path / "m.plan", device="cpu")
    with pytest.raises(InputError, match="does not exist"):
        open_engine(RecordingTensorRT.v10(), tmp_path / "missing.plan", device="cpu")


# ====================================================================================== need a GPU / TensorRT
needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_time_engine_uses_cuda_events_on_the_runner_stream(tmp_path):
    """The stand-in engine with real torch CUDA memory and streams: proves the binding and timing plumbing."""
    from compress.tensorrt.engine import time_engine

    trt = RecordingTensorRT.v10()
    (tmp_path / "m.plan").write_bytes(b"SERIALIZED-ENGINE")
    runner = open_engine(trt, tmp_path / "m.plan")
    timing = time_engine(runner, {"x": np.ones((2, 3, 8, 8), np.float32)}, warmup=2, runs=5)
    assert timing["runs"] == 5 and 0 <= timing["p50_ms"] <= timing["p90_ms"] <= timing["p99_ms"]
    handle = runner.stream_handle
    assert handle != 0 and trt.args("IExecutionContext.execute_async_v3") == [(handle,)] * 7


@pytest.mark.skipif(not HAVE_TENSORRT or not __import__("torch").cuda.is_available(),
                    reason="needs the real tensorrt module and a CUDA GPU (TensorRT cannot be installed on the CPU "
                           "build machine)")
def test_real_tensorrt_builds_runs_and_times_the_qdq_model(onnx_file, tmp_path):
    import onnxruntime as ort
    import tensorrt as trt

    from compress.tensorrt.engine import time_engine

    assert check_qdq(onnx.load(str(onnx_file)), tensorrt=trt.__version__) == []
    profile = derive_profile(dynamic_axes(onnx.load(str(onnx_file))), batch=2, max_batch=4)
    result = build_engine(trt, onnx_file, tmp_path / "m.plan", profile=profile, workspace_mb=256)
    again = build_engine(trt, onnx_file, tmp_path / "m2.plan", profile=profile, workspace_mb=256)
    assert result["timing_cache"]["saved_bytes"] > 0 and again["timing_cache"]["reused"] is True
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    [got] = open_engine(trt, tmp_path / "m.plan")({"x": x})
    [want] = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.shape == want.shape and np.abs(got - want).max() < 0.05 * np.abs(want).max()
    timing = time_engine(open_engine(trt, tmp_path / "m.plan"), {"x": x}, warmup=3, runs=10)
    assert timing["p50_ms"] > 0
    check_manifest(write_manifest(tmp_path / "m.plan.json", facts=device_facts(trt), onnx_sha256="0" * 64,
                                  profile=profile, precision="int8", dla_core=None, gates={}, build=result),
                   device_facts(trt))
