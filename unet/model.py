"""The U-Net (Ronneberger et al. 2015) as used by the method, with batch norm in every block and
input padding so that any image size comes back aligned pixel for pixel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segmenter.errors import CysegError

UPSAMPLING = ("transpose", "bilinear")


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    """Up-sample, concatenate the skip connection, convolve."""

    def __init__(self, in_ch: int, out_ch: int, upsampling: str):
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_ch, out_ch, 1))
        self.conv = _conv_block(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net with `depth` levels (depth-1 down-samplings) and `n` filters at the first level.

    Inputs of any size are padded (reflection) to a multiple of 2**(depth-1) and the output is
    cropped back, so output pixel (y, x) always corresponds to input pixel (y, x). The output is
    per-class logits (N, n_classes, H, W).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 1, depth: int = 5, n: int = 16,
                 upsampling: str = "transpose"):
        super().__init__()
        if depth < 2 or depth > 8:
            raise CysegError(f"U-Net depth {depth} is outside 2..8; choose e.g. --depth 5")
        if n < 1:
            raise CysegError(f"U-Net initial filters n={n} must be >= 1; choose e.g. --n 16")
        if upsampling not in UPSAMPLING:
            raise CysegError(f"upsampling '{upsampling}' is unknown; use one of {', '.join(UPSAMPLING)}")
        if in_channels < 1 or n_classes < 1:
            raise CysegError("in_channels and n_classes must be >= 1")
        self.in_channels, self.n_classes, self.depth = in_channels, n_classes, depth
        self.n, self.upsampling = n, upsampling
        widths = [n * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList([_conv_block(in_channels, widths[0])] +
                                  [_conv_block(widths[i - 1], widths[i]) for i in range(1, depth)])
        self.up = nn.ModuleList([_Up(widths[i], widths[i - 1], upsampling) for i in range(depth - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2 ** (self.depth - 1)

    @property
    def receptive_field(self) -> int:
        """Side (px) of the input square one output pixel depends on: two 3x3 convolutions per level
        on the way down and up, 2x2 poolings between levels (up to 4 px more where the pooling grid
        falls badly). 200 px at depth 5."""
        down = 4 * (2 ** self.depth - 1)
        pools = 2 ** (self.depth - 1) - 1
        up = 4 * (2 ** (self.depth - 1) - 1)
        return 1 + down + pools + up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)[..., :h, :w]
