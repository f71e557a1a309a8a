"""`finetune: {nodes: 2}`: one torchrun per Ray node (a STRICT_SPREAD placement group), joined by torchrun's
rendezvous, on a real local Ray cluster (tests/ray_cluster.py: a head node and a worker node, 1 CPU each)."""
from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from ray_cluster import ray_cluster_fixture  # noqa: F401 (the fixture)
from test_ddp import _Bar, _distance, _OneRank, _setup

from compress.errors import InputError
from compress.recipe import PruneFinetune

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None,
                                                   reason="Ray is not installed (compress[ray])")]


def _no_batchnorm(module):
    plain = copy.deepcopy(module)
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(parent, name, torch.nn.Identity())
    return plain


def test_two_nodes_train_what_one_process_trains_on_the_same_global_batches(tmp, ray_cluster, monkeypatch):
    """Rank 0 on the head node, rank 1 on the worker node: the same global batches and averaged gradients as
    one process (no BatchNorm, so the computation is the same; see tests/test_ddp.py)."""
    from compress.ddp_worker import launch
    from compress.train import finetune

    monkeypatch.setenv("HOME", str(tmp))   # as the cluster's nodes (see ray_cluster)
    module, train, _ = _setup(256)
    plain = _no_batchnorm(module)
    cfg = PruneFinetune(epochs=1, batch_size=32, lr=0.002, devices=1, nodes=2, ray=ray_cluster)
    one, two, logged = copy.deepcopy(plain), copy.deepcopy(plain), []
    ref = finetune(one, None, train, cfg, log=print, evaluate=lambda m: "", where="stages[0]", threads=1,
                   progress=lambda *a: _Bar(), seed=0, ddp=_OneRank())
    got = launch(two, None, train, cfg, log=logged.append, evaluate=lambda m: "", where="stages[0]", threads=1,
                 masks=None, seed=0)
    assert any("2 nodes x 1 processes" in line for line in logged), logged
    assert got[0]["processes"] == 2   # rank 0 saw a world of two: the other node's rank joined it
    moved, apart = _distance(one, plain), _distance(two, one)
    assert moved > 0.1 and apart < 1e-4 * moved, (moved, apart)
    assert got[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-5)


def test_more_nodes_than_the_cluster_has_is_a_clear_error(tmp, ray_cluster, monkeypatch):
    from compress.ddp_worker import launch

    monkeypatch.setenv("HOME", str(tmp))
    module, train, _ = _setup(64)
    cfg = PruneFinetune(epochs=1, batch_size=32, devices=1, nodes=4, ray=ray_cluster)
    with pytest.raises(InputError, match="cannot give 4 different nodes 1 CPU") as err:
        launch(module, None, train, cfg, log=print, evaluate=lambda m: "", where="stages[0]", threads=1, masks=None,
               seed=0)
    assert err.value.where == "stages[0].finetune.nodes"
