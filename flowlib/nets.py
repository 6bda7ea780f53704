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
    """``x -> cat([x, g(x)])`` with ``g = 1x1 conv (-> intermediate) -> ReLU -> 3x3 conv (-> growth)``.

    With ``gated=True`` the 3x3 conv produces ``2 * growth`` channels ``(a, b)`` and
    ``g = a * sigmoid(b)``; otherwise ``g = ReLU(conv)``.
    """

    def __init__(self, in_channels: int, intermediate: int, growth: int, gated: bool):
        super().__init__()
        self.gated = gated
        self.bottleneck = nn.Conv2d(in_channels, intermediate, 1)
        self.conv = nn.Conv2d(intermediate, 2 * growth if gated else growth, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(torch.relu(self.bottleneck(x)))
        if self.gated:
            a, b = h.chunk(2, dim=1)  # 2 x [B, growth, H, W]
            h = a * torch.sigmoid(b)
        else:
            h = torch.relu(h)
        return torch.cat([x, h], dim=1)  # [B, C + growth, H, W]


class DenseNet(nn.Module):
    """Densely connected conditioner: ``depth`` layers each adding ``growth`` channels.

    Layer ``d`` sees the input and the outputs of all earlier layers (``C_in + d growth``
    channels), projects them with a 1x1 conv to ``intermediate`` channels, applies a 3x3
    (optionally gated, ``a * sigmoid(b)``) conv producing ``growth`` channels and
    concatenates them. A zero-initialised 3x3 conv maps the ``C_in + depth growth``
    channels to ``C_out``.

    Cost per pixel: ``sum_d (C_in + d growth) i + 9 i growth (x2 gated)`` plus
    ``9 (C_in + depth growth) C_out`` multiply-adds (``i = intermediate``).
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    Reference: the conditioner of "The Convolution Exponential and Generalized Sylvester
    Flows", Hoogeboom, Garcia Satorras, Tomczak & Welling, 2020 (and of their IDF/emerging
    convolution code); DenseNet: Huang et al., 2017.

    Arguments:
        in_channels, out_channels: ``C_in`` and ``C_out``.
        depth: number of densely connected layers.
        growth: channels each layer adds.
        intermediate: width of each layer's 1x1 projection.
        gated: gated 3x3 convolutions instead of ReLU.
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
        layers = []
        width = in_channels
        for _ in range(depth):
            layers.append(_DenseLayer(width, intermediate, growth, gated))
            width += growth
        self.layers = nn.Sequential(*layers)
        self.out = _zero_conv(width, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.layers(x)).to(x.dtype)


NETS = {"conv": ConvNet, "densenet": DenseNet}


def make_net(net: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Build the conditioner ``net`` (``"conv"``: kwarg ``hidden``; ``"densenet"``:
    ``depth``, ``growth``, ``intermediate``, ``gated``) mapping ``in_channels`` to ``out_channels``."""
    if net not in NETS:
        raise ValueError(f"unknown conditioner net {net!r}; choose one of {sorted(NETS)}")
    allowed = {"conv": {"hidden"}, "densenet": {"depth", "growth", "intermediate", "gated"}}[net]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(
            f"conditioner net {net!r} does not take {sorted(unknown)}; its options are {sorted(allowed)}"
        )
    return NETS[net](in_channels, out_channels, **kwargs)
