"""The shipped quickstart gives the same gate verdicts run after run (timing adapts until the speed-up's
interval clears the threshold; the stage cache reuses the artifacts, validation and timing run anew)."""
from __future__ import annotations

import pytest

import compress

from conftest import ROOT


@pytest.mark.slow
def test_the_quickstart_gives_the_same_verdicts_three_runs_in_a_row(tmp):
    verdicts = []
    for _ in range(3):
        result = compress.run(ROOT / "recipes" / "quickstart.yaml", out=tmp / "runs")
        verdicts.append([(g["gate"], g["verdict"], g["passed"]) for g in result.gates])
        speed = next(g for g in result.gates if g["gate"] == "min_speedup")
        assert speed["interval"][0] <= speed["value"] <= speed["interval"][1]
    assert verdicts[0] == verdicts[1] == verdicts[2], verdicts
    assert all(v != "inconclusive" for _, v, _ in verdicts[0]), verdicts[0]
