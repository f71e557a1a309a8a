"""What TensorRT's ONNX parser takes from an explicit-quantization (QDQ) model, checked with onnx + numpy only.

`check_qdq(model, tensorrt=">=10.3,<11")` returns one `Violation` per problem, each naming the node and its
op in one sentence. The Q/DQ rules (ported from the prototype /work/proto/trt/qdq_check.py; sources: the
parser's QuantDequantLinearHelper in onnx/onnx-tensorrt onnxOpImporters.cpp and TensorRT's "Working with
Quantized Types" guide):

  opset          ai.onnx opset >= 13 (per-axis Q/DQ came with 13); float16/bfloat16 scales need >= 19;
                 with a TensorRT version, at most the highest opset that version's parser accepts
  zero point     int8 (or fp8/int4) and all zeros: TensorRT quantization is symmetric signed
  scale          a constant (initializer, Constant, through Identity), every value finite and > 0
  per-axis       only on weights (the quantized tensor is an initializer), one scale per channel, on the
                 output-channel axis: 0 for Conv and for Gemm with transB=1, 1 for ConvTranspose and for
                 Gemm with transB=0
  DQ input       int8 (or fp8/int4): an int32 DequantizeLinear (a quantized bias, ONNX Runtime's default)
                 is rejected
  operators      with a TensorRT version, every ai.onnx op must be in that version's operator table;
                 an op from another domain needs a TensorRT plugin

Not ported from the prototype: its warnings (int8 weights using -128, a Q feeding something other than a
DQ, a Q without zero point); TensorRT builds those.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..errors import InputError

QDQ = ("QuantizeLinear", "DequantizeLinear")
_QUANT_TYPES = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, getattr(TensorProto, "INT4", -1),
                getattr(TensorProto, "FLOAT4E2M1", -1)}
_TYPE_NAME = {v: k.lower() for k, v in TensorProto.DataType.items()}
_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Violation:
    node: str      # the node's name ("<model>" for a model-wide rule)
    op: str        # its op type ("" for a model-wide rule)
    rule: str      # opset, opset-max, zero-point, scale-constant, scale-positive, per-axis-activation,
    #                per-axis-shape, per-axis-axis, dq-input-dtype, unsupported-op, plugin-op
    message: str   # one sentence naming the node and its op

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------------------------------------
# The ONNX-TensorRT operator table: rows marked "Y" in onnx/onnx-tensorrt docs/operators.md at the commit
# NVIDIA/TensorRT pins as its parsers/onnx submodule for each release (`git ls-tree vX parsers/onnx`):
#   10.1   96e781103cfc4adf4a6bb557e94bac8e693f6f4c (TensorRT v10.1.0)  "opset 9 to opset 20"   150 ops
#   10.14  c72727708d4ed8a379c04c4ea235c157ce9c3870 (TensorRT v10.14)   "opset 9 to opset 24"   155 ops
#   10.15  fa5aa9f61e7781d2ca8f5351d42c1f19525a6124 (TensorRT v10.15)   "opset 9 to opset 24"   158 ops
#   10.16  6bde6596eca84abf9afe9b4d21c18c32800fd3ad (TensorRT v10.16)   "opset 9 to opset 24"   158 ops
#   11.1   7c51a63a719180eb5160c874c111746f3fb46a6b (TensorRT v11.1)    "opset 9 to opset 24"   159 ops
# 10.3 (JetPack 6) pins onnx-tensorrt 62bdde2a04fcd53c2409cb895ee18db445b7e755, whose operators.md could
# not be retrieved; its entry is DERIVED: the 10.1 list, because docs/Changelog.md (onnx-tensorrt commit
# 0137504e2b25fe5253bd85d26b073378fb67805b) adds no operator in 10.2 or 10.3 (the next additions are 10.4:
# BlackmanWindow, HammingWindow, HannWindow; 10.5: STFT). 10.13 (JetPack 7, pin 346bdcae450e) and 11.0
# (pin 5ab48c5c436a) could not be retrieved either; `supported_ops` covers a version the table lacks with
# the nearest entry below it.
_OPS_10_1 = frozenset((
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout",
    "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot",
    "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
    "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu",
    "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter",
    "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice",
    "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
))
_OPS_10_14 = _OPS_10_1 | {"Attention", "BlackmanWindow", "HammingWindow", "HannWindow", "STFT"}
_OPS_10_15 = _OPS_10_14 | {"RMSNormalization", "RotaryEmbedding", "TensorScatter"}
_OPS_11_1 = _OPS_10_15 | {"Swish"}

# major.minor -> (operators, highest ai.onnx opset the parser accepts, where the entry comes from)
OPERATOR_TABLE: dict[str, tuple[frozenset[str], int, str]] = {
    "10.1": (_OPS_10_1, 20, "onnx-tensorrt@96e781103cfc docs/operators.md"),
    "10.3": (_OPS_10_1, 20, "derived: the 10.1 list; onnx-tensorrt@0137504e2b25 docs/Changelog.md adds no op "
                            "in 10.2/10.3"),
    "10.14": (_OPS_10_14, 24, "onnx-tensorrt@c72727708d4e docs/operators.md"),
    "10.15": (_OPS_10_15, 24, "onnx-tensorrt@fa5aa9f61e77 docs/operators.md"),
    "10.16": (_OPS_10_15, 24, "onnx-tensorrt@6bde6596eca8 docs/operators.md"),
    "11.1": (_OPS_11_1, 24, "onnx-tensorrt@7c51a63a7191 docs/operators.md"),
}


@dataclass(frozen=True)
class OpSupport:
    ops: frozenset[str]          # ai.onnx op types every covered version's parser supports
    max_opset: int               # the highest ai.onnx opset every covered version's parser accepts
    versions: tuple[str, ...]    # the table entries used (major.minor)
    spec: str                    # the version spec asked for


def _spec(version_spec: str) -> SpecifierSet:
    text = version_spec.strip()
    if text[:1].isdigit():                      # a bare version: "10.3" or "10.13.2" means that release line
        try:
            v = Version(text)
        except InvalidVersion as exc:
            raise InputError(f"TensorRT version {version_spec!r} is not a version or a pip-style range "
                             "such as '>=10.3,<11'") from exc
        text = f"=={v.major}.{v.minor}.*"
    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise InputError(f"TensorRT version range {version_spec!r} is not a pip-style range such as "
                         "'>=10.3,<11'") from exc


def _lower_bound(spec: SpecifierSet) -> Version | None:
    bounds = []
    for s in spec:
        if s.operator in (">=", ">", "==", "~=", "==="):
            try:
                bounds.append(Version(s.version.rstrip(".*")))
            except InvalidVersion:
                continue
    return max(bounds) if bounds else None


def supported_ops(version_spec: str) -> OpSupport:
    """The ONNX ops (and the highest opset) that EVERY TensorRT version in `version_spec` parses.

    `version_spec` is a pip-style range (">=10.3,<11") or a version ("10.3", "10.13.2": that minor line).
    The result intersects the table entries inside the range; when the range starts at a version the
    table lacks (10.13, say), the nearest entry below its start stands in for the versions up to the next
    entry, so the answer stays on the safe side (operators are added over releases, not removed)."""
    spec = _spec(version_spec)
    table = sorted(OPERATOR_TABLE, key=Version)
    inside = [k for k in table if spec.contains(Version(k), prereleases=True)]
    low = _lower_bound(spec)
    if low is not None:
        low = Version(f"{low.major}.{low.minor}") if len(low.release) > 1 else Version(f"{low.major}.0")
    below = [k for k in table if low is not None and Version(k) <= low]
    if low is not None and not (inside and Version(inside[0]) == low) and below:
        inside = [below[-1]] + [k for k in inside if k != below[-1]]
    if not inside:
        raise InputError(f"no ONNX-TensorRT operator table covers TensorRT {version_spec}: the table holds "
                         f"{', '.join(table)}")
    ops = frozenset.intersection(*(OPERATOR_TABLE[k][0] for k in inside))
    return OpSupport(ops=ops, max_opset=min(OPERATOR_TABLE[k][1] for k in inside),
                     versions=tuple(inside), spec=version_spec)


# ----------------------------------------------------------------------------------------------------------
def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.init = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def _const_node(self, name: str) -> tuple[TensorProto | None, bool]:
        """(the TensorProto behind a constant tensor, found): an initializer, a Constant, or through Identity."""
        for _ in range(9):
            if name in self.init:
                return self.init[name], True
            n = self.producer.get(name)
            if n is None:
                return None, False
            if n.op_type == "Constant":
                t = next((a.t for a in n.attribute if a.name == "value"), None)
                return t, t is not None
            if n.op_type != "Identity":
                return None, False
            name = n.input[0]
        return None, False

    def const(self, name: str) -> np.ndarray | None:
        t, found = self._const_node(name)
        return numpy_helper.to_array(t) if found else None

    def const_dtype(self, name: str) -> int | None:
        t, found = self._const_node(name)
        return t.data_type if found else None

    def weight(self, name: str) -> np.ndarray | None:
        """The weight behind a quantizer input: a constant, or for DQ(Q(W)) the constant W."""
        w = self.const(name)
        if w is not None:
            return w
        n = self.producer.get(name)
        if n is not None and n.op_type == "QuantizeLinear":
            return self.const(n.input[0])
        return None


def _label(n: onnx.NodeProto, i: int) -> str:
    return n.name or f"{n.op_type}#{i}"


def _values(a: np.ndarray) -> str:
    u = np.unique(a)
    text = ", ".join(str(v) for v in u[:4].tolist())
    return text if u.size <= 4 else f"{text}, ..."


def _output_channel_axis(consumer: onnx.NodeProto, weight_input: str) -> int | None:
    """The axis TensorRT expects per-channel weight scales on, for the op that uses the weight."""
    if consumer.op_type in ("Conv", "ConvTranspose") and len(consumer.input) > 1 and consumer.input[1] == weight_input:
        return 0 if consumer.op_type == "Conv" else 1
    if consumer.op_type == "Gemm" and len(consumer.input) > 1 and consumer.input[1] == weight_input:
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def _check_quantizer(g: _Graph, n: onnx.NodeProto, name: str, opset: int) -> list[Violation]:
    out: list[Violation] = []
    op = n.op_type
    where = f"node {name}: {op}"

    def add(rule: str, text: str) -> None:
        out.append(Violation(name, op, rule, f"{where} {text}"))

    axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
    # --- the quantized tensor a DequantizeLinear reads
    x_dtype = g.const_dtype(n.input[0]) if op == "DequantizeLinear" else None
    bad_x = x_dtype is not None and x_dtype not in _QUANT_TYPES
    if bad_x:
        bias = x_dtype == TensorProto.INT32
        kind = str(_TYPE_NAME.get(x_dtype, x_dtype))
        add("dq-input-dtype", f"dequantizes {'an' if kind[:1] in 'aeio' else 'a'} {kind} tensor"
                              f"{' (a quantized bias)' if bias else ''}; TensorRT dequantizes int8 only"
                              f"{', so keep the bias in float' if bias else ''}")
    # --- scale
    scale_name = n.input[1] if len(n.input) > 1 else ""
    scale = g.const(scale_name) if scale_name else None
    if scale is None:
        add("scale-constant", f"scale '{scale_name}' is not a constant; TensorRT needs an initializer or Constant")
    else:
        s = scale.astype(np.float64).ravel()
        bad = ~(np.isfinite(s) & (s > 0))
        if bad.any():
            lo = float(np.nanmin(s)) if np.isfinite(s).any() else float(s[0])
            add("scale-positive", f"has {int(bad.sum())} of {s.size} scale values not finite and > 0 "
                                  f"(min {lo:.3g}); TensorRT needs every scale finite and > 0")
        sdt = g.const_dtype(scale_name)
        if sdt in (TensorProto.FLOAT16, TensorProto.BFLOAT16) and opset < 19:
            add("opset", f"has a {_TYPE_NAME[sdt]} scale, which needs ai.onnx opset >= 19; the model imports "
                         f"opset {opset}")
        if s.size > 1:
            w = g.weight(n.input[0])
            if w is None:
                add("per-axis-activation", f"quantizes activation '{n.input[0]}' per axis ({s.size} scales on "
                                           f"axis {axis}); TensorRT allows per-axis scales on weights only")
            else:
                ax = axis if axis >= 0 else axis + w.ndim
                if not (0 <= ax < w.ndim) or w.shape[ax] != s.size:
                    add("per-axis-shape", f"has {s.size} scales for weight shape {list(w.shape)} on axis {axis}; "
                                          "TensorRT needs one scale per channel of that axis")
                dq_out = n.output[0] if op == "DequantizeLinear" else next(
                    (c.output[0] for c in g.consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"), None)
                for c in g.consumers.get(dq_out, []) if dq_out else []:
                    want = _output_channel_axis(c, dq_out)
                    if want is not None and ax != want:
                        add("per-axis-axis", f"quantizes the weight of {c.op_type} {c.name or '?'} on axis {ax}; "
                                             f"TensorRT needs its output-channel axis {want}")
    # --- zero point
    if len(n.input) > 2 and n.input[2]:
        zdt = g.const_dtype(n.input[2])
        zp = g.const(n.input[2])
        if zp is None:
            add("zero-point", f"zero-point '{n.input[2]}' is not a constant; TensorRT needs int8 zero-point 0")
        elif not bad_x and (zdt not in _QUANT_TYPES or np.any(zp.astype(np.float64) != 0)):
            add("zero-point", f"zero-point is {_TYPE_NAME.get(zdt, zdt)} {_values(zp)}; TensorRT needs int8 "
                              "zero-point 0")
    return out


def _nodes(graph: onnx.GraphProto):
    """Every node, subgraphs (If/Loop/Scan bodies) included."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _nodes(sub)


def check_qdq(model: onnx.ModelProto, *, tensorrt: str | None = None) -> list[Violation]:
    """Every way `model` breaks TensorRT's explicit-quantization rules; with `tensorrt` (a pip-style range
    such as ">=10.3,<11", or a version "10.3"), also every op and the opset the parser of some version in
    that range does not take. An empty list means the model passes."""
    violations: list[Violation] = []
    g = _Graph(model.graph)
    opset = _opset(model)
    qdq = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type in QDQ]
    if qdq and opset < 13:
        i, n = qdq[0]
        violations.append(Violation(_label(n, i), n.op_type, "opset",
                                    f"node {_label(n, i)}: {n.op_type} needs ai.onnx opset >= 13 for TensorRT "
                                    f"(per-axis Q/DQ); the model imports opset {opset}"))
    for i, n in qdq:
        violations += _check_quantizer(g, n, _label(n, i), opset)
    if tensorrt is not None:
        support = supported_ops(tensorrt)
        covered = ", ".join(support.versions)
        if opset > support.max_opset:
            violations.append(Violation("<model>", "", "opset-max",
                                        f"model: imports ai.onnx opset {opset}, above {support.max_opset}, the "
                                        f"highest the ONNX parser of TensorRT {tensorrt} accepts (table "
                                        f"entries {covered})"))
        for i, n in enumerate(_nodes(model.graph)):
            name = _label(n, i)
            if n.domain not in _STANDARD_DOMAINS:
                violations.append(Violation(name, n.op_type, "plugin-op",
                                            f"node {name}: {n.domain}.{n.op_type} is not an ai.onnx op; "
                                            "TensorRT needs a plugin registered under that name"))
            elif n.op_type not in support.ops:
                violations.append(Violation(name, n.op_type, "unsupported-op",
                                            f"node {name}: {n.op_type} is not supported by the ONNX parser of "
                                            f"every TensorRT {tensorrt} (operator table entries {covered})"))
    return violations


def dynamic_axes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Each graph input's dims: an int for a fixed dim, the symbolic name for a named dynamic dim, None for
    an unnamed dynamic one. Initializers listed as inputs (old exporters) are left out."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[int | str | None]] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims: list[int | str | None] = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out[inp.name] = dims
    return out
