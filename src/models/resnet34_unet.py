"""ResNet-34 encoder (He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image Recognition",
Table 1, 34-layer column) with a UNet decoder, trained from scratch.

Encoder, written out here rather than imported (no torchvision/timm in ``src/``):

* stem: 7x7 conv, 64, stride 2 -> BN -> ReLU                       (1/2 resolution, 64 ch)
* 3x3 max-pool, stride 2                                            (1/4)
* conv2_x .. conv5_x: [3, 4, 6, 3] BasicBlocks (two 3x3 convs) at 64/128/256/512 channels; the
  first block of conv3_x..conv5_x has stride 2 (1/8, 1/16, 1/32). Shortcuts are identity, or a
  projection (1x1 conv + BN, option B of the paper) where the shape changes.
* no global average pool / fc: 21,284,672 parameters (torchvision's resnet34 minus its fc layer).

Decoder (five UNet steps, as in segmentation_models_pytorch's Unet): upsample x2 (nearest; the
3x3 convs after it learn the interpolation), concatenate the encoder map of that resolution
(conv4_x, conv3_x, conv2_x, stem), two 3x3 conv-BN-ReLU; the fifth step returns from 1/2 to full
resolution with no skip. A 1x1 conv head gives the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationModel, is_positive_int, require_positive_ints
from .blocks import DoubleConv, concat_skip, init_head, init_weights
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # Projection shortcut only where the identity would not fit (channels or resolution change).
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet34Encoder(nn.Module):
    """ResNet-34 without avgpool/fc; ``forward`` returns the five maps the decoder needs.

    Returns [stem (1/2, 64), conv2_x (1/4, 64), conv3_x (1/8, 128), conv4_x (1/16, 256),
    conv5_x (1/32, 512)].
    """

    stage_blocks = (3, 4, 6, 3)
    stage_channels = (64, 128, 256, 512)
    out_channels = (64, *stage_channels)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        c_in = 64
        for i, (blocks, c_out) in enumerate(zip(self.stage_blocks, self.stage_channels, strict=True)):
            stride = 1 if i == 0 else 2  # conv2_x follows the max-pool, so it keeps resolution
            layers = [BasicBlock(c_in, c_out, stride)]
            layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.stem(x)
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


class DecoderBlock(nn.Module):
    """Nearest x2 upsample, optional skip concatenation, DoubleConv (3x3 conv-BN-ReLU twice)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = concat_skip(x, skip)
        return self.conv(x)


@register_model("resnet34_unet")
class ResNet34UNet(SegmentationModel):
    """ResNet-34 encoder + 5-step UNet decoder: (N, in_channels, H, W) -> (N, out_channels, H, W).

    H and W must be multiples of 32 (five stride-2 steps); other sizes raise ValueError naming the
    nearest valid ones. ``decoder_channels`` are the widths of the five decoder steps, from 1/16 to
    full resolution. ``self.encoder`` is the bare ResNet-34 (21,284,672 parameters).
    """

    size_multiple = 32

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        # Hydra hands over a ListConfig; normalise to a tuple of ints and check its shape here, so a
        # bad config fails with a clear message instead of a shape error in the first forward pass.
        is_list = isinstance(decoder_channels, Sequence) and not isinstance(decoder_channels, str)
        channels = tuple(decoder_channels) if is_list else ()
        if len(channels) != 5 or not all(map(is_positive_int, channels)):
            raise ValueError(f"decoder_channels must be 5 positive integers, got {decoder_channels!r}")
        decoder_channels = channels
        require_positive_ints(in_channels=in_channels, out_channels=out_channels)
        self.encoder = ResNet34Encoder(in_channels)
        # Skips from deepest-but-one to shallowest; the last step (1/2 -> 1/1) has none.
        skip_channels = (*reversed(ResNet34Encoder.out_channels[:-1]), 0)  # (256, 128, 64, 64, 0)
        inputs = (ResNet34Encoder.out_channels[-1], *decoder_channels[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out)
            for c_in, c_skip, c_out in zip(inputs, skip_channels, decoder_channels, strict=True)
        )
        self.head = nn.Conv2d(decoder_channels[-1], out_channels, kernel_size=1)
        init_weights(self)
        init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        *skips, x = self.encoder(x)
        for block, skip in zip(self.decoder, [*reversed(skips), None], strict=True):
            x = block(x, skip)
        return self.head(x)
