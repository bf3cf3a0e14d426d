"""`UNetSegmenter`: the method's U-Net with BCE + soft Dice loss (class-weighted) and Adam."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metrics.torch_metrics import dice_loss
from segmenter.base import Segmenter
from unet.model import UNet

DEFAULT_CONFIG = {"in_channels": 3, "n_classes": 1, "depth": 5, "n": 16, "upsampling": "transpose"}


class UNetSegmenter(Segmenter):
    """U-Net segmenter. Unlike the thesis' code, the Dice term is computed on probabilities (not
    rounded masks), so it contributes a gradient."""

    arch = "unet"

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__({**DEFAULT_CONFIG, **(config or {})}, **kwargs)

    @classmethod
    def build_model(cls, config: dict[str, Any]) -> nn.Module:
        return UNet(in_channels=config["in_channels"], n_classes=config["n_classes"], depth=config["depth"],
                    n=config["n"], upsampling=config["upsampling"])

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32)
        per_class_bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(0, 2, 3))
        bce = (per_class_bce * weights).sum() / weights.sum()
        return bce + dice_loss(torch.sigmoid(logits.float()), target, weights=self.class_weights)

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=lr)
