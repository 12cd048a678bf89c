"""Building blocks shared by the UNet-style decoders."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv -> [BatchNorm] -> ReLU) twice, padding 1 so height and width are kept.

    With BatchNorm the convs have no bias: BN's shift makes it redundant.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN at identity, zero biases, as in He et al. 2015.

    PyTorch's default conv init (Kaiming-uniform with a=sqrt(5)) shrinks activations layer by
    layer, which slows the start of training from scratch in deep ReLU nets.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_head(head: nn.Conv2d) -> None:
    """Start the 1x1 logit head near zero: every pixel begins at p≈0.5 instead of the saturated
    logits (std ≈ 5) a fan-out Kaiming init gives a layer with one output channel, which made the
    first epochs spend their steps undoing the init."""
    nn.init.normal_(head.weight, std=0.01)
    if head.bias is not None:
        nn.init.zeros_(head.bias)


def concat_skip(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Concatenate an upsampled decoder map with its encoder skip along channels.

    Sizes always match because inputs are checked to be multiples of the model's size_multiple;
    a mismatch here is a bug, so fail loudly instead of cropping (the paper's unpadded UNet crops).
    """
    if x.shape[-2:] != skip.shape[-2:]:
        raise RuntimeError(f"skip size {tuple(skip.shape[-2:])} != decoder size {tuple(x.shape[-2:])}")
    return torch.cat([skip, x], dim=1)
