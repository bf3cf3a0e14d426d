"""Inference copy of a network with each batch norm folded into the convolution before it: the
same outputs (to float rounding) without a full-resolution batch-norm pass per block, which saves
one read and one write of every activation (bench/wsi.py measures the folded network against the
module as trained: docs/benchmarks.md, "Whole slides")."""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of `model` in which every `Conv2d` directly followed by a
    `BatchNorm2d` inside an `nn.Sequential` is replaced by one convolution (the norm by identity)."""
    with torch.no_grad():
        folded = copy.deepcopy(model).eval()
        _fold(folded)
    return folded


def _fold(folded: nn.Module) -> None:
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()


def weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever any parameter or buffer of `model` is modified in place (optimiser step,
    `load_state_dict`), so a derived copy knows when it is stale."""
    return (id(model), *(t._version for t in model.parameters()), *(t._version for t in model.buffers()))
