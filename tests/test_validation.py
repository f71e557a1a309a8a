"""The shared harness: metrics, agreement, primary metric choice, gates, latency protocol."""
from __future__ import annotations

import numpy as np
import pytest

from compress.data import open_dataset
from compress.errors import DataError
from compress.models import ModelSpec
from compress.pipeline import evaluate_gates
from compress.recipe import DataSource, InputSpec, Transform, parse_recipe
from compress.runtimes import Session
from compress.validation import Agreement, default_primary, evaluate, machine_info, measure_latency, primary_metric

from conftest import fashion_recipe


def _dataset(tmp, x, y=None):
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(tmp / "d.npz", **arrays)
    spec = ModelSpec(inputs=[InputSpec(shape=[1, *x.shape[1:]])], outputs=["scores"])
    return open_dataset(DataSource(path=str(tmp / "d.npz")), Transform(), spec, base_dir=tmp, seed=0, where="data.eval")


def _fixed_session(outputs: np.ndarray) -> Session:
    """A 'runtime' whose answer for sample i is row i of `outputs` (input carries the index)."""
    def infer(feeds):
        return [outputs[feeds["input"][:, 0].astype(int)]]
    return Session("fake", infer)


def test_top1_top5_and_agreement_are_exact(tmp):
    n, classes = 10, 8
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((n, classes)).astype(np.float32)
    labels = scores.argmax(1)
    labels[:3] = (labels[:3] + 1) % classes         # 3 of 10 wrong at top-1
    data = _dataset(tmp, np.arange(n, dtype=np.float32)[:, None], labels.astype(np.int64))
    ref = evaluate(_fixed_session(scores), data, batch_size=4, output_names=["scores"], collect=True)
    assert ref.metrics["top1"] == pytest.approx(70.0)
    top5 = np.argsort(-scores, 1)[:, :5]
    assert ref.metrics["top5"] == pytest.approx(100.0 * np.mean([(top5[i] == labels[i]).any() for i in range(n)]))

    flipped = scores.copy()
    flipped[0] = -flipped[0]                         # one sample disagrees and has cosine -1
    res = evaluate(_fixed_session(flipped), data, batch_size=4, output_names=["scores"], reference=ref.outputs)
    a = res.agreement["scores"]
    assert a["top1_agreement"] == pytest.approx(90.0)
    assert a["cosine"] == pytest.approx((9 - 1) / 10)
    assert a["cosine_min"] == pytest.approx(-1.0)
    assert a["max_abs_error"] == pytest.approx(2 * np.abs(scores[0]).max(), rel=1e-6)


def test_labels_out_of_range_are_a_data_error(tmp):
    scores = np.eye(4, dtype=np.float32)
    data = _dataset(tmp, np.arange(4, dtype=np.float32)[:, None], np.array([0, 1, 2, 9]))
    with pytest.raises(DataError, match="label 9 but the model outputs 4 classes"):
        evaluate(_fixed_session(scores), data, batch_size=4, output_names=["scores"])


def test_agreement_for_embeddings_uses_cosine():
    # [N, 1, 16] is an embedding, not class scores [N, C]: agreement is cosine and error, never top-1
    # (argmax over a flattened embedding means nothing, and would read 100 here)
    ref = np.random.default_rng(1).standard_normal((5, 1, 16))
    agree = Agreement()
    agree.update(ref[:3] * 2.0, ref[:3])            # two batches: scaled, so cosine 1 and error |ref|
    agree.update(ref[3:] * 2.0, ref[3:])
    result = agree.result()
    assert set(result) == {"cosine", "cosine_min", "max_abs_error", "mse"}
    assert result["cosine"] == pytest.approx(1.0) and result["cosine_min"] == pytest.approx(1.0)
    assert result["max_abs_error"] == pytest.approx(np.abs(ref).max())
    assert result["mse"] == pytest.approx(np.mean(ref ** 2))
    # the primary metric of such a model is cosine, in points, and top-1 agreement is refused
    assert default_primary(False, [ref]) == "cosine"
    from compress.validation import EvalResult

    evaluated = EvalResult(agreement={"embedding": result})
    assert primary_metric(evaluated, ["embedding"], "cosine") == ("cosine", pytest.approx(100.0))
    with pytest.raises(DataError, match="needs a first output of class scores"):
        primary_metric(evaluated, ["embedding"], "top1_agreement")


def test_default_primary_metric():
    assert default_primary(True, [np.zeros((2, 10))]) == "top1"
    assert default_primary(False, [np.zeros((2, 10))]) == "top1_agreement"
    assert default_primary(False, [np.zeros((2, 1, 8, 8))]) == "cosine"


def test_primary_top1_needs_labels():
    from compress.validation import EvalResult

    with pytest.raises(DataError, match="needs integer labels"):
        primary_metric(EvalResult(), ["o"], "top1")


def _records(ref_top1, final_top1, speedup, size):
    reference = {"primary": {"name": "top1", "value": ref_top1}}
    final = {"primary": {"name": "top1", "value": final_top1}, "artifact": {"size_mb": size},
             "speedup": {"vs_fp32_same_runtime": speedup, "baseline": "fp32-openvino"}}
    return reference, final


def test_gates_pass_and_fail_with_amounts():
    recipe = parse_recipe(fashion_recipe([{"type": "export"}], gates={"max_accuracy_drop": 1.0, "min_speedup": 2.0,
                                                                        "max_size_mb": 0.5}))
    reference, final = _records(92.0, 90.5, 2.5, 0.6)
    gates = {g["gate"]: g for g in evaluate_gates(recipe, final, reference)}
    assert not gates["max_accuracy_drop"]["passed"] and gates["max_accuracy_drop"]["value"] == pytest.approx(1.5)
    assert "dropped 1.50 points" in gates["max_accuracy_drop"]["detail"]
    assert gates["min_speedup"]["passed"]
    assert not gates["max_size_mb"]["passed"]
    reference, final = _records(92.0, 91.5, 1.5, 0.4)
    gates = {g["gate"]: g for g in evaluate_gates(recipe, final, reference)}
    assert gates["max_accuracy_drop"]["passed"] and not gates["min_speedup"]["passed"]
    assert gates["max_size_mb"]["passed"]


def test_a_stage_gate_judges_that_stage_and_the_recipe_gate_the_last():
    recipe = parse_recipe(fashion_recipe(
        [{"type": "export", "gates": {"max_accuracy_drop": 0.5, "min_speedup": 1.2}}, {"type": "compile",
                                                                                     "target": "x86-cpu-onnxruntime"}],
        gates={"max_accuracy_drop": 1.0}))
    reference, first = _records(92.0, 91.2, 1.5, 0.6)
    _, last = _records(92.0, 91.4, 1.1, 0.6)
    stages = [{**first, "name": "export", "type": "export", "details": {}},
              {**last, "name": "compile", "type": "compile", "details": {}}]
    gates = {g["gate"]: g for g in evaluate_gates(recipe, last, reference, stages)}
    assert set(gates) == {"export.max_accuracy_drop", "export.min_speedup", "max_accuracy_drop"}
    assert not gates["export.max_accuracy_drop"]["passed"]
    assert gates["export.max_accuracy_drop"]["value"] == pytest.approx(0.8)
    assert gates["export.max_accuracy_drop"]["detail"].startswith("after stage export: top1 dropped 0.80 points")
    assert gates["export.min_speedup"]["passed"] and gates["max_accuracy_drop"]["passed"]


def test_latency_protocol_counts_runs_and_records_threads():
    calls = []
    session = Session("fake", lambda feeds: calls.append(1) or [feeds["input"]], settings={"threads": 3})
    lat = measure_latency(session, {"input": np.zeros((2, 4), np.float32)}, warmup=4, runs=9)
    assert len(calls) == 13 and lat["runs"] == 9 and lat["batch"] == 2 and lat["threads"] == 3
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]


def test_fixed_batch_session_chunks_and_pads():
    seen = []

    def infer(feeds):
        seen.append(feeds["input"].shape[0])
        return [feeds["input"] * 2]

    session = Session("fake", infer, fixed_batch=4)
    out = session.run({"input": np.arange(10, dtype=np.float32)[:, None]})[0]
    assert seen == [4, 4, 4]
    np.testing.assert_array_equal(out[:, 0], np.arange(10) * 2)


def test_machine_info_records_isa():
    info = machine_info()
    assert info["logical_cores"] >= 1 and isinstance(info["isa"], list) and isinstance(info["vnni"], bool)
