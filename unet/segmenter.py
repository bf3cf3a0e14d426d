"""`UNetSegmenter`: the method's U-Net with BCE + soft Dice loss (class-weighted, partial labels
left out) and Adam."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metrics.torch_metrics import dice_loss, per_item_class_soft_dice
from segmenter.base import Segmenter, output_channels
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
        return UNet(in_channels=config["in_channels"], n_classes=output_channels(config),
                    depth=config["depth"],
                    n=config["n"], upsampling=config["upsampling"])

    def loss(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Class-weighted BCE + soft Dice of the class channels; with partial labels (`known` (N, C) not
        all 1) each class is averaged over the items that annotate it, and the classes no item of the
        batch annotates are left out; with unknown pixels (`known` (N, C, H, W)) those pixels are left
        out (`_pixel_loss`); `weight` (N, C, H, W) weighs each pixel's BCE (the gaps between touching
        objects). A model with instances adds the distance channels' error (`_distance_loss`), and with
        contours the contour channels' (`_contour_loss`)."""
        if self.instance_classes:
            c, d = self.n_classes, self.n_classes + len(self.instance_classes)
            known = torch.ones(target.shape[:2], device=logits.device) if known is None else known
            loss = (self._class_loss(logits[:, :c], target[:, :c], known[:, :c], weight)
                    + self._distance_loss(logits[:, c:d], target[:, c:d], known[:, c:d]))
            if self.contours:
                loss = loss + self._contour_loss(logits[:, d:], target[:, d:], known[:, d:])
            return loss
        return self._class_loss(logits, target, known, weight)

    def _class_loss(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
        """The class channels' loss (see `loss`)."""
        if known is not None and not bool(known.all()):
            if known.dim() == 4:
                return self._pixel_loss(logits, target, known, weight)
            return self._partial_loss(logits, target, known, weight)
        weights = torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32)
        per_class_bce = _bce_map(logits, target, weight).mean(dim=(0, 2, 3))
        bce = (per_class_bce * weights).sum() / weights.sum()
        return bce + dice_loss(torch.sigmoid(logits.float()), target, weights=self.class_weights)

    def _partial_loss(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
        """The loss above where only the (item, class) pairs with `known` 1 count: equal to it when
        every pair is known, and independent of the logits' targets where it is not."""
        known = known.to(device=logits.device, dtype=torch.float32)
        bce = _bce_map(logits, target, weight).mean(dim=(2, 3))
        dice = 1 - per_item_class_soft_dice(torch.sigmoid(logits.float()), target)
        counted = known.sum(dim=0)
        per_class = ((bce + dice) * known).sum(dim=0) / counted.clamp(min=1)
        weights = torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32) * (counted > 0)
        return (per_class * weights).sum() / weights.sum().clamp(min=torch.finfo(torch.float32).tiny)

    def _pixel_loss(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
        """The loss above counting only the pixels with `known` (N, C, H, W) 1: each class's BCE is
        averaged over its known pixels of the batch and the soft Dice sees neither the predictions nor
        the targets of the others, so the loss does not depend on the logits there."""
        known = known.to(device=logits.device, dtype=torch.float32)
        weights = torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32)
        bce_map = _bce_map(logits, target, weight)
        per_class_bce = (bce_map * known).sum(dim=(0, 2, 3)) / known.sum(dim=(0, 2, 3)).clamp(min=1)
        bce = (per_class_bce * weights).sum() / weights.sum()
        return bce + dice_loss(torch.sigmoid(logits.float()) * known, target * known, weights=self.class_weights)

    @staticmethod
    def _distance_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Squared error of the predicted (sigmoid) distance to the normalised distance target, per
        item and channel the mean of its means inside and outside the objects (so that small, sparse
        objects such as nuclei weigh as much as the background around them), averaged over the
        (item, channel) pairs whose instances are annotated (`known` 1); 0 when none of the batch is."""
        known = known.to(device=logits.device, dtype=torch.float32)
        error = (torch.sigmoid(logits.float()) - target) ** 2
        inside = (target > 0).float()
        outside = 1 - inside
        if known.dim() == 4:  # unknown pixels are neither inside nor outside; a pair counts if any is known
            inside, outside, known = inside * known, outside * known, (known.sum(dim=(2, 3)) > 0).float()
        n_in, n_out = inside.sum(dim=(2, 3)), outside.sum(dim=(2, 3))
        mean_in = (error * inside).sum(dim=(2, 3)) / n_in.clamp(min=1)
        mean_out = (error * outside).sum(dim=(2, 3)) / n_out.clamp(min=1)
        per_pair = (mean_in + mean_out) / ((n_in > 0).float() + (n_out > 0).float()).clamp(min=1)
        return (per_pair * known).sum() / known.sum().clamp(min=1)

    @staticmethod
    def _contour_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """BCE + soft Dice of the contour bands, per item and channel over its known pixels, averaged over
        the (item, channel) pairs whose instances are annotated (`known` (N, K) or (N, K, H, W)); the
        Dice keeps the thin bands from vanishing under the background's weight."""
        known = known.to(device=logits.device, dtype=torch.float32)
        pixels = known if known.dim() == 4 else known[:, :, None, None].expand_as(target)
        pairs = (pixels.sum(dim=(2, 3)) > 0).float()
        bce = (_bce_map(logits, target, None) * pixels).sum(dim=(2, 3)) / pixels.sum(dim=(2, 3)).clamp(min=1)
        dice = 1 - per_item_class_soft_dice(torch.sigmoid(logits.float()) * pixels, target * pixels)
        return ((bce + dice) * pairs).sum() / pairs.sum().clamp(min=1)

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=lr)


def _bce_map(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-pixel binary cross-entropy (float32), times `weight` where given."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return bce if weight is None else bce * weight.to(bce.device)
