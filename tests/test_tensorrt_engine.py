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

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import InputError
from compress.tensorrt.rules import OPERATOR_TABLE, Violation, check_qdq, dynamic_axes, supported_ops

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


# ====================================================================================== QDQ models
def qdq_model(*, act_zp=np.int8(0), act_scale=0.1, act_per_axis=False, w_axis=0, w_scale=None, opset=17,
              scale_dtype=np.float32, bias_int32=False, extra_op=None, batch="batch") -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(W via Q/DQ) [-> extra_op] -> y, names like a torch export."""
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
    with pytest.raises(InputError, match="no ONNX-TensorRT operator table covers TensorRT 8.6"):
        supported_ops("8.6")
    with pytest.raises(InputError, match="pip-style range"):
        supported_ops("newest")


def test_dynamic_axes_lists_fixed_and_symbolic_dims():
    model = qdq_model()
    assert dynamic_axes(model) == {"x": ["batch", 3, 8, 8]}
    model.graph.input[0].type.tensor_type.shape.dim[2].Clear()
    assert dynamic_axes(model) == {"x": ["batch", 3, None, 8]}
