"""A sweep's points reuse each other's validations (compress/measure_memo.py), and only theirs."""
from __future__ import annotations

import pytest

import compress

from conftest import fashion_recipe


def _recipe(method: str = "minmax", eval_samples: int = 300) -> dict:
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino", "method": method}])
    recipe["data"]["eval"]["samples"] = eval_samples
    return recipe


@pytest.mark.slow
def test_points_reuse_the_validations_they_share_and_nothing_else(tmp):
    first = compress.run(_recipe(), out=tmp, reuse_measurements=True).report
    assert "reused" not in first["reference"] and "reused" not in first["stages"][0]

    # same recipe again, as a sweep point: every validation comes from the first run, figures identical
    again = compress.run(_recipe(), out=tmp, reuse_measurements=True).report
    assert again["reference"]["reused"]["run"] == first["run_dir"].rsplit("/", 1)[-1]
    stage, before = again["stages"][0], first["stages"][0]
    assert stage["reused"]["run"] == again["reference"]["reused"]["run"]
    assert any("validation reused from" in note for note in stage["notes"])
    for key in ("metrics", "agreement", "latency", "timing", "primary", "speedup"):
        assert stage[key] == before[key], key
    assert stage["artifact"]["path"].startswith("stages/")   # this run's own artifact, not the first run's

    # a different stage config: the reference and the OpenVINO baseline are shared, the new INT8 model is measured
    other = compress.run(_recipe(method="percentile"), out=tmp, reuse_measurements=True).report
    assert "reused" in other["reference"] and "reused" not in other["stages"][0]
    assert "reused" in other["baselines"]["openvino"]

    # other eval data: nothing is reused (agreement and metrics are of other samples)
    fewer = compress.run(_recipe(eval_samples=200), out=tmp, reuse_measurements=True).report
    assert "reused" not in fewer["reference"] and "reused" not in fewer["stages"][0]
    assert fewer["stages"][0]["samples"] == 200

    # a plain run measures everything again, whatever the memo holds
    plain = compress.run(_recipe(), out=tmp).report
    assert "reused" not in plain["reference"] and "reused" not in plain["stages"][0]
    assert not any("validation reused" in note for note in plain["stages"][0]["notes"])
