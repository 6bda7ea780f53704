"""Conditioner networks: the non-invertible maps that *predict* a coupling's parameters.

Every network maps ``[B, C_in, H, W] -> [B, C_out, H, W]`` (any ``H, W``), ends in a
zero-initialised convolution (so a coupling built on it starts at the identity) and
returns its output in the dtype of its input. Callers run them inside
:func:`flowlib.amp.conditioner_autocast`; only element-wise ops, ``conv2d`` and
channel concatenation are used, so ``channels_last`` inputs stay ``channels_last``.

* :class:`ConvNet` - Glow's small conditioner: 3x3 conv, ReLU, 1x1 conv, ReLU, zero 3x3 conv.
* :class:`DenseNet` - densely connected block in the style of Hoogeboom et al.'s code
  (``paper-mixing`` preset: depth 8, growth 64, intermediate 64, gated convolutions).
* :func:`make_net` - build one of them by name (``"conv"`` or ``"densenet"``).

Taught in ``notebooks/03_invertible_convolutions.ipynb``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "DenseNet", "make_net", "NETS"]


def _zero_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv2d:
    """A convolution with zero weight and bias: the output is exactly 0 at initialisation."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConvNet(nn.Module):
    """Glow's conditioner: ``3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-init 3x3 conv``.

    Cost: ``9 C_in h + h^2 + 9 h C_out`` multiply-adds per pixel (``h = hidden``).
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    Reference: Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018.

    Arguments:
        in_channels, out_channels: ``C_in`` and ``C_out``.
        hidden: width ``h`` of the two hidden layers.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"ConvNet needs hidden >= 1, got {hidden}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            _zero_conv(hidden, out_channels, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).to(x.dtype)


class _DenseLayer(nn.Module):
    """``x -> cat([x, g(x)])`` with ``g = ReLU(3x3 conv(ReLU(1x1 conv(x))))``: adds ``growth`` channels.

    The 1x1 conv keeps the full width ``C`` of its input (no bottleneck), as in the
    conditioner of Hoogeboom et al.'s code.
    """

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.mix = nn.Conv2d(in_channels, in_channels, 1)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(torch.relu(self.mix(x))))  # [B, growth, H, W]
        return torch.cat([x, h], dim=1)  # [B, C + growth, H, W]


class DenseNet(nn.Module):
    """Densely connected conditioner with a residual stem, as in Hoogeboom et al.'s code.

    ``h = 1x1 conv(x)`` (``C_in -> intermediate``); ``depth`` dense layers each add
    ``growth`` channels (layer ``d`` sees ``intermediate + d growth`` channels through a
    full-width 1x1 conv, then a 3x3 conv); a 1x1 conv maps the ``intermediate + depth
    growth`` channels back to ``intermediate`` (gated: it produces ``(a, b)`` and
    returns ``a * sigmoid(b)``), added to ``h`` (residual); a zero-initialised 1x1
    conv maps to ``C_out``.

    Cost per pixel: ``sum_d (w_d^2 + 9 w_d growth)`` multiply-adds with
    ``w_d = intermediate + d growth``, plus the stem and heads; for the ``paper-mixing``
    preset (depth 8, growth 64, intermediate 64) about 1.3 M parameters per coupling,
    which is where the 55.9 M of the official model come from.
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    Reference: the conditioner of "The Convolution Exponential and Generalized Sylvester
    Flows", Hoogeboom, Garcia Satorras, Tomczak & Welling, 2020 (and of their IDF/emerging
    convolution code); DenseNet: Huang et al., 2017.

    Arguments:
        in_channels, out_channels: ``C_in`` and ``C_out``.
        depth: number of densely connected layers.
        growth: channels each layer adds.
        intermediate: width of the stem and of the block's output.
        gated: gated (``a * sigmoid(b)``) block output instead of ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 8,
        growth: int = 64,
        intermediate: int = 64,
        gated: bool = True,
    ):
        super().__init__()
        if depth < 1 or growth < 1 or intermediate < 1:
            raise ValueError(
                f"DenseNet needs depth, growth and intermediate >= 1, got {depth}, {growth}, {intermediate}"
            )
        self.gated = gated
        self.stem = nn.Conv2d(in_channels, intermediate, 1)
        width = intermediate
        layers = []
        for _ in range(depth):
            layers.append(_DenseLayer(width, growth))
            width += growth
        self.layers = nn.Sequential(*layers)
        self.merge = nn.Conv2d(width, 2 * intermediate if gated else intermediate, 1)
        self.out = _zero_conv(intermediate, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # [B, intermediate, H, W]
        m = self.merge(self.layers(h))  # [B, (2x) intermediate, H, W]
        if self.gated:
            a, b = m.chunk(2, dim=1)
            m = a * torch.sigmoid(b)
        else:
            m = torch.relu(m)
        return self.out(h + m).to(x.dtype)


NETS = {"conv": ConvNet, "densenet": DenseNet}


def make_net(net: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Build the conditioner ``net`` (``"conv"``: kwarg ``hidden``; ``"densenet"``:
    ``depth``, ``growth``, ``intermediate``, ``gated``) mapping ``in_channels`` to ``out_channels``."""
    if net not in NETS:
        raise ValueError(f"unknown conditioner net {net!r}; choose one of {sorted(NETS)}")
    allowed = {"conv": {"hidden"}, "densenet": {"depth", "growth", "intermediate", "gated"}}[net]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"conditioner net {net!r} does not take {sorted(unknown)}; its options are {sorted(allowed)}")
    return NETS[net](in_channels, out_channels, **kwargs)
