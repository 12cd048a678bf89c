"""UNet (Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation"), trained from scratch.

Differences from the paper, all deliberate:

* 3x3 convs are padded (padding 1), so the output has the input's size and skip connections need
  no cropping; the paper uses unpadded convs (572x572 input -> 388x388 output). H and W must
  therefore be multiples of 16 (four 2x2 max-pools).
* BatchNorm after every 3x3 conv (``batch_norm=True``, switchable off), which the paper predates;
  it makes training from scratch with a plain optimizer much less sensitive to the learning rate.
* One output channel (pet-vs-background logits for BCE-with-logits) instead of two softmax channels.
* Optional ``upsample="bilinear"``: bilinear x2 upsampling + 1x1 conv halving channels, in place of
  the paper's 2x2 up-convolution (fewer parameters, no checkerboard artefacts).

Layout: 4 down steps (DoubleConv then 2x2 max-pool) with widths w, 2w, 4w, 8w and a 16w bottleneck
(w=64: 64-128-256-512-1024), 4 up steps (2x2 up-conv halving channels, concat the encoder map of
the same resolution, DoubleConv), and a 1x1 conv head.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel, require_positive_ints
from .blocks import DoubleConv, concat_skip, init_head, init_weights
from .registry import register_model

UPSAMPLE_MODES = ("transpose", "bilinear")


class Down(nn.Sequential):
    """2x2 max-pool (halves H, W) then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, batch_norm))


class Up(nn.Module):
    """Upsample x2 halving channels, concatenate the skip, then DoubleConv.

    ``in_channels`` is the decoder input width; the skip has ``in_channels // 2`` channels, so the
    concatenation is back to ``in_channels`` before the DoubleConv reduces it to ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: str, batch_norm: bool = True) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, kernel_size=1),
            )
        self.conv = DoubleConv(in_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(concat_skip(self.up(x), skip))


@register_model("unet")
class UNet(SegmentationModel):
    """UNet with padded convs: (N, in_channels, H, W) -> logits (N, out_channels, H, W).

    H and W must be multiples of 16; other sizes raise ValueError naming the nearest valid ones.
    Default (base_width=64, transpose, BN) has 31,037,633 parameters (paper: ~31.03M).
    """

    size_multiple = 16

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        base_width: int = 64,
        upsample: str = "transpose",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        require_positive_ints(in_channels=in_channels, out_channels=out_channels, base_width=base_width)
        w = base_width
        self.inc = DoubleConv(in_channels, w, batch_norm)
        self.down1 = Down(w, 2 * w, batch_norm)
        self.down2 = Down(2 * w, 4 * w, batch_norm)
        self.down3 = Down(4 * w, 8 * w, batch_norm)
        self.down4 = Down(8 * w, 16 * w, batch_norm)
        self.up1 = Up(16 * w, 8 * w, upsample, batch_norm)
        self.up2 = Up(8 * w, 4 * w, upsample, batch_norm)
        self.up3 = Up(4 * w, 2 * w, upsample, batch_norm)
        self.up4 = Up(2 * w, w, upsample, batch_norm)
        self.head = nn.Conv2d(w, out_channels, kernel_size=1)
        init_weights(self)
        init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x1 = self.inc(x)  # 1/1
        x2 = self.down1(x1)  # 1/2
        x3 = self.down2(x2)  # 1/4
        x4 = self.down3(x3)  # 1/8
        x = self.down4(x4)  # 1/16, bottleneck
        x = self.up1(x, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.head(x)
