"""torchvision architectures with seeded random weights and BatchNorm statistics re-estimated on
random inputs. A random-init network in eval mode can output ~1e-9 everywhere (mobilenet_v2 does):
INT8 then rounds everything to zero and agreement means nothing. Re-estimated statistics keep the
activations O(1), like a trained network's, without downloading any weights."""
from __future__ import annotations

import torch
import torchvision


def bn_recalibrated(name: str = "mobilenet_v2", seed: int = 0, batches: int = 4, batch: int = 8):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None          # a plain average over the batches below
            module.reset_running_stats()
    model.train()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, 224, 224, generator=generator))
    return model.eval()
