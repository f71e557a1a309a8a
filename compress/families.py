"""Model families that the quantization libraries treat differently, recognised from the graph.

A transformer is recognised by attention: a MatMul of two activations (Q·Kᵀ or P·V, neither a
weight) next to a Softmax. CNN classifiers, MLPs and recurrent models have none. The count is
read off the graph the backend quantizes (the OpenVINO model, or the ONNX file), so it works
for any model a user brings, torch or ONNX, whatever its module names.
"""
from __future__ import annotations

from pathlib import Path

# ops that only reshape, cast or scale on the way between an attention MatMul and its Softmax
_PASS_THROUGH = {"Convert", "Reshape", "Transpose", "Multiply", "Divide", "Add", "Mul", "Div", "Cast", "Squeeze",
                 "Unsqueeze", "Where", "Select", "Softmax", "SoftMax"}
_SOFTMAX = {"Softmax", "SoftMax"}
_HOPS = 4


def _near_softmax(node, neighbours, kind, key) -> bool:
    """A Softmax within a few reshape/scale hops of `node`, walking the graph both ways."""
    frontier, seen = [node], set()
    for _ in range(_HOPS):
        following = []
        for n in frontier:
            for m in neighbours(n):
                if kind(m) in _SOFTMAX:
                    return True
                if kind(m) in _PASS_THROUGH and key(m) not in seen:
                    seen.add(key(m))
                    following.append(m)
        frontier = following
    return False


def attention_matmuls_openvino(model) -> int:
    """MatMuls of two activations within a few reshape/scale hops of a Softmax, in an OpenVINO model; a fused
    ScaledDotProductAttention op (OpenVINO's frontends make them) counts as its two MatMuls."""
    def constant(output, depth=0) -> bool:
        node = output.get_node()
        kind = node.get_type_name()
        if kind == "Constant":
            return True
        if kind in ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze") and depth < _HOPS:
            return constant(node.input_value(0), depth + 1)
        return False

    def neighbours(n) -> list:
        return [i.get_node() for i in n.input_values()] + \
            [t.get_node() for out in n.outputs() for t in out.get_target_inputs()]

    def near_softmax(node) -> bool:
        return _near_softmax(node, neighbours, lambda m: m.get_type_name(), lambda m: m.get_friendly_name())

    ops = list(model.get_ops())
    fused = sum(op.get_type_name() == "ScaledDotProductAttention" for op in ops)   # OpenVINO's fused attention
    return 2 * fused + sum(1 for op in ops if op.get_type_name() == "MatMul"
                           and not any(constant(v) for v in op.input_values()) and near_softmax(op))


def attention_matmuls_onnx(path: Path) -> int:
    """The same count on an ONNX graph (initializers and Constant nodes are weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def constant(name: str, depth=0) -> bool:
        if name in constants:
            return True
        node = producer.get(name)
        if node is not None and node.op_type in ("Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                                                 "DequantizeLinear") and depth < _HOPS:
            return constant(node.input[0], depth + 1)
        return False

    def neighbours(n) -> list:
        return [producer[i] for i in n.input if i in producer] + [c for o in n.output for c in consumers.get(o, [])]

    def near_softmax(node) -> bool:
        return _near_softmax(node, neighbours, lambda m: m.op_type, id)

    return sum(1 for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2
               and not any(constant(i) for i in n.input) and near_softmax(n))


def decide(setting: str, attention: int) -> tuple[str, str]:
    """(family, why) from the recipe's `model_type` and the attention count."""
    if setting != "auto":
        return setting, "set in the recipe"
    if attention:
        return "transformer", f"auto: {attention} attention MatMul{'s' if attention > 1 else ''} (activation x " \
                              "activation next to a Softmax) found in the graph"
    return "generic", "auto: no attention found in the graph"
