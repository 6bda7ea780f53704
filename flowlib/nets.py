"""Conditioner networks: the non-invertible maps that *predict* a coupling's parameters.

Every network maps ``[B, C_in, H, W] -> [B, C_out, H, W]`` (any ``H, W``), ends in a
zero-initialised convolution (so a coupling built on it starts at the identity) and
returns its output in the dtype of its input. Callers run them inside
:func:`flowlib.precision.conditioned`; only element-wise ops, ``conv2d`` and
channel concatenation are used, so ``channels_last`` inputs stay ``channels_last``.

* :class:`ConvNet` - Glow's small conditioner: 3x3 conv, ReLU, 1x1 conv, ReLU, zero 3x3 conv.
* :class:`DenseNet` - a densely connected block in a residual connection, as in Hoogeboom et
  al.'s code (``paper-mixing`` preset: depth 8, growth 63, intermediate 64, gated convolutions).
* :class:`DenseBlock` - the dense block itself; :class:`GatedConv2d` - its gated output
  convolution ``a + b * sigmoid(c)``.
* :func:`make_net` - build one of them by name (``"conv"`` or ``"densenet"``).

Taught in ``notebooks/03_invertible_convolutions.ipynb``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "DenseNet", "DenseBlock", "GatedConv2d", "make_net", "NETS"]


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


class GatedConv2d(nn.Module):
    """Gated convolution of Hoogeboom et al.'s code: ``y = a + b * sigmoid(c)``.

    Formula: one ``k x k`` convolution maps ``C_in`` to ``3 C_out`` channels, split into
    thirds ``(a, b, c)`` along the channel axis; ``y = a + b * sigmoid(c)`` (a linear
    path ``a`` plus a gated path). Not the GLU ``a * sigmoid(b)`` (Dauphin et al., 2017).
    Cost: ``3 k^2 C_in C_out`` multiply-adds per pixel; ``3 C_out (k^2 C_in + 1)`` parameters.
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    Reference: the conditioner of "The Convolution Exponential and Generalized Sylvester
    Flows", Hoogeboom, Garcia Satorras, Tomczak & Welling, 2020 (official code).

    >>> GatedConv2d(5, 2)(torch.zeros(1, 5, 4, 4)).shape
    torch.Size([1, 2, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        a, b, c = self.conv(x).chunk(3, dim=1)  # 3 x [B, C_out, H, W]
        return a + b * torch.sigmoid(c)


class DenseBlock(nn.Module):
    """Densely connected block: ``depth`` dense layers, then a 1x1 (gated) convolution.

    Layer ``d`` sees ``w_d = C_in + d growth`` channels (a full-width 1x1 conv, ReLU, a
    3x3 conv to ``growth`` channels, ReLU, concatenated to its input); the last 1x1
    convolution maps the ``C_in + depth growth`` channels to ``C_out``, either gated
    (:class:`GatedConv2d`, ``a + b sigmoid(c)``) or linear. No residual, no zero
    initialisation: the DenseNet of Hoogeboom et al.'s code, used inside :class:`DenseNet`
    and as the dequantization context encoder (:mod:`flowlib.models.dequant`).
    Cost per pixel: ``sum_d (w_d^2 + 9 w_d growth) + (3 if gated else 1) w_depth C_out``
    multiply-adds (as many parameters, plus biases).
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    Reference: DenseNet, Huang et al., 2017; Hoogeboom et al., 2020 (official code).

    >>> DenseBlock(3, 8, depth=2, growth=4)(torch.zeros(1, 3, 6, 6)).shape
    torch.Size([1, 8, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, growth: int, gated: bool = True):
        super().__init__()
        if depth < 1 or growth < 1:
            raise ValueError(f"DenseBlock needs depth and growth >= 1, got {depth}, {growth}")
        width, layers = in_channels, []
        for _ in range(depth):
            layers.append(_DenseLayer(width, growth))
            width += growth
        self.layers = nn.Sequential(*layers)
        self.merge = GatedConv2d(width, out_channels) if gated else nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(self.layers(x))


class DenseNet(nn.Module):
    """Dense block inside a residual connection, as the coupling conditioner of Hoogeboom et al.'s code.

    ``h = 1x1 conv(x)`` (``C_in -> intermediate``); ``h = h + DenseBlock(h)`` (``depth``
    dense layers of ``growth`` channels, then a gated ``a + b sigmoid(c)`` or linear 1x1
    conv back to ``intermediate``, see :class:`DenseBlock`); a zero-initialised 1x1 conv
    maps ``h`` to ``C_out``.

    Cost per pixel: ``sum_d (w_d^2 + 9 w_d growth) + 3 w_depth intermediate`` multiply-adds
    (gated) with ``w_d = intermediate + d growth``, plus the stem and head; for the
    ``paper-mixing`` preset (depth 8, growth 63, intermediate 64) about 2.2 M parameters
    per coupling, as in the official model (55.9 M parameters in all).
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    Reference: the conditioner of "The Convolution Exponential and Generalized Sylvester
    Flows", Hoogeboom, Garcia Satorras, Tomczak & Welling, 2020 (and of their IDF/emerging
    convolution code); DenseNet: Huang et al., 2017.

    >>> DenseNet(3, 4, depth=2, growth=4, intermediate=6)(torch.randn(1, 3, 5, 5)).abs().max()
    tensor(0., grad_fn=<MaxBackward1>)

    Arguments:
        in_channels, out_channels: ``C_in`` and ``C_out``.
        depth: number of densely connected layers.
        growth: channels each layer adds.
        intermediate: width of the stem and of the block's output.
        gated: end the block with the gated convolution :class:`GatedConv2d` (else a linear 1x1 conv).
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
        self.stem = nn.Conv2d(in_channels, intermediate, 1)
        self.block = DenseBlock(intermediate, intermediate, depth, growth, gated)
        self.out = _zero_conv(intermediate, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # [B, intermediate, H, W]
        return self.out(h + self.block(h)).to(x.dtype)


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
