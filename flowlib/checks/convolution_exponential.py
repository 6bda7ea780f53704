"""Checkers for ``lessons/02_convolution_exponential_exercises.ipynb``.

>>> from flowlib.checks.convolution_exponential import check_conv_exp_logdet
>>> def logdet(kernel, H, W):
...     return H * W * torch.diagonal(kernel[:, :, 1, 1]).sum()
>>> check_conv_exp_logdet(logdet).ok
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional import conv_exp, conv_exp_logdet, conv_matrix
from . import Case, Feedback, run_cases

__all__ = ["check_conv_matrix", "check_conv_exp_series", "check_inv_conv_exp", "check_conv_exp_logdet"]


def _kernel(channels: int, scale: float, seed: int, size: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(channels, channels, size, size, generator=g, dtype=torch.float64)


def _image(channels: int, height: int, width: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, height, width, generator=g, dtype=torch.float64)


def _flipped(kernel: Tensor) -> Tensor:
    """The kernel rotated by 180 degrees: true convolution instead of cross-correlation."""
    return kernel.flip(-2, -1)


def _transposed(kernel: Tensor) -> Tensor:
    """The kernel of the transposed convolution ``M^T``: swap channels and rotate by 180 degrees."""
    return kernel.transpose(0, 1).flip(-2, -1)


def _series(x: Tensor, kernel: Tensor, terms: int, divisor=lambda k: k, from_x: bool = False) -> Tensor:
    """``sum_{k<=terms} M^k x / k!`` (term_k = M term_{k-1} / divisor(k)) and typical distortions of it."""
    padding = kernel.shape[-1] // 2
    result, term = x, x
    for k in range(1, terms + 1):
        if from_x:
            term = F.conv2d(x, kernel, padding=padding) / k
        else:
            term = F.conv2d(term, kernel, padding=padding) / divisor(k)
        result = result + term
    return result


def check_conv_matrix(fn) -> Feedback:
    """Exercise: ``fn(kernel, H, W)`` is the ``(C H W) x (C H W)`` matrix ``M`` with ``M @ x.flatten() = conv(x)``."""
    cases = []
    for channels, height, width, seed in [(2, 3, 4, 1), (1, 4, 5, 0)]:  # 2 channels first: a flip != M^T
        k = _kernel(channels, 1.0, seed)
        cases.append(
            Case(
                f"a random {channels}-channel 3x3 kernel on a {height}x{width} image",
                (k, height, width),
                conv_matrix(k, height, width),
                [
                    (
                        "your matrix is the transpose of M: column j must be the convolution of the j-th basis "
                        "image (M @ e_j), and you filled row j with it",
                        conv_matrix(k, height, width).T,
                    ),
                    (
                        "your matrix uses the kernel rotated by 180 degrees: F.conv2d computes a cross-correlation "
                        "(no flip), so M[p, q] = kernel[q - p + centre] without flipping",
                        conv_matrix(_flipped(k), height, width),
                    ),
                    (
                        "your matrix wraps around the border (periodic padding); F.conv2d pads with zeros, so taps "
                        "that fall outside the image contribute nothing",
                        _periodic_matrix(k, height, width),
                    ),
                    (
                        "sign error: your matrix is -M, the convolution with -kernel; column j is +conv(e_j)",
                        -conv_matrix(k, height, width),
                    ),
                ],
            )
        )
    return run_cases(
        "conv_matrix",
        fn,
        cases,
        hint="A linear map is known once you know what it does to each basis vector. What does the convolution "
        "do to an image that is zero except for a single entry, and where does that go in M?",
        success="your matrix reproduces F.conv2d with zero padding on 1- and 2-channel kernels.",
    )


def _periodic_matrix(kernel: Tensor, height: int, width: int) -> Tensor:
    channels = kernel.shape[1]
    n = channels * height * width
    basis = torch.eye(n, dtype=kernel.dtype).reshape(n, channels, height, width)
    padded = F.pad(basis, (1, 1, 1, 1), mode="circular")  # [n, C, H+2, W+2]
    return F.conv2d(padded, kernel).reshape(n, n).T


def check_conv_exp_series(fn) -> Feedback:
    """Exercise: ``fn(x, kernel, terms) = sum_{k=0}^{terms} M^k x / k!`` using only convolutions.

    The last case has 24 terms: dividing by ``math.factorial(k)`` raises ``OverflowError`` from ``k = 21`` on
    (the integer-factorial trap).
    """
    cases = []
    for channels, terms, seed in [(2, 6, 10), (1, 3, 11), (2, 24, 12)]:
        k = _kernel(channels, 0.3, seed)
        x = _image(channels, 5, 6, seed + 100)
        cases.append(
            Case(
                f"a random {channels}-channel kernel and a 5x6 image batch with terms={terms}",
                (x, k, terms),
                conv_exp(x, k, terms=terms),
                [
                    (
                        "you stopped one term early: sum k = 0 .. terms inclusive (terms convolutions)",
                        _series(x, k, terms - 1),
                    ),
                    ("you added one term too many: the last term is M^terms x / terms!", _series(x, k, terms + 1)),
                    (
                        "the terms are missing 1/k!: compute each term from the previous one, term = conv(term) / k",
                        _series(x, k, terms, divisor=lambda k: 1),
                    ),
                    (
                        "you divided the running term by k! instead of by k: the previous term already carries "
                        "1/(k-1)!, so term_k = conv(term_{k-1}) / k",
                        _series(x, k, terms, divisor=lambda k: float(math.factorial(k))),
                    ),
                    (
                        "sign error: that is exp(-M) x (the series of the negated kernel, or alternating signs); "
                        "every term of exp(M) x is added with a + sign",
                        _series(x, -k, terms),
                    ),
                    (
                        "every term convolves x itself (M x / k); term k is M applied to term k-1, so that "
                        "it equals M^k x / k!",
                        _series(x, k, terms, from_x=True),
                    ),
                    (
                        "you used the kernel rotated by 180 degrees; use F.conv2d(term, kernel, padding=...) "
                        "with the kernel as given",
                        _series(x, _flipped(k), terms),
                    ),
                    (
                        "you swapped the kernel's output and input channels: kernel[o, i] maps channel i to "
                        "channel o, as in F.conv2d",
                        _series(x, k.transpose(0, 1), terms),
                    ),
                ],
            )
        )
    return run_cases(
        "conv_exp_series",
        fn,
        cases,
        hint="You never need M^k itself: how is the k-th term of the series related to the (k-1)-th one, and "
        "what does multiplying by M mean for an image?",
        success="your series equals flowlib.functional.conv_exp(x, kernel, terms=terms) without ever building M "
        "(also with 24 terms: no integer-factorial overflow).",
    )


def check_inv_conv_exp(fn) -> Feedback:
    """Exercise: ``fn(y, kernel, terms) = exp(-M) y``, the inverse of the convolution exponential.

    The first case has 22 terms, so a series built on ``math.factorial`` ints shows the integer-factorial trap.
    """
    cases = []
    for channels, terms, seed in [(2, 22, 20), (3, 10, 21)]:
        k = _kernel(channels, 0.25, seed)
        y = _image(channels, 6, 5, seed + 100)
        cases.append(
            Case(
                f"a random {channels}-channel kernel and a 6x5 image batch with terms={terms}",
                (y, k, terms),
                conv_exp(y, -k, terms=terms),
                [
                    (
                        "you kept only the first-order term (I - M) y; the inverse is the whole series exp(-M) y "
                        "with `terms` terms",
                        y - F.conv2d(y, k, padding=1),
                    ),
                    (
                        "sign error: with +kernel you applied exp(M) again; the inverse is exp(-M): negate the kernel",
                        conv_exp(y, k, terms=terms),
                    ),
                    (
                        "you transposed the kernel (exp(M^T)); that inverts exp(M) only for a skew-symmetric "
                        "M. Negate the kernel instead: exp(-M) = conv_exp with -kernel",
                        conv_exp(y, _transposed(k), terms=terms),
                    ),
                    (
                        "you swapped the channels of the kernel (a transpose of the channel mixing); negate the "
                        "kernel instead",
                        conv_exp(y, k.transpose(0, 1), terms=terms),
                    ),
                    (
                        "you rotated the kernel by 180 degrees; the inverse negates it: exp(-M)",
                        conv_exp(y, _flipped(k), terms=terms),
                    ),
                    (
                        "you negated the output; negate the kernel (the input of the exponential)",
                        -conv_exp(y, k, terms=terms),
                    ),
                    (
                        "you negated only the centre tap; every tap of the kernel must be negated",
                        conv_exp(y, k - 2 * _centre_only(k), terms=terms),
                    ),
                ],
            )
        )
    return run_cases(
        "inv_conv_exp",
        fn,
        cases,
        hint="Lesson 01 inverted a matrix exponential without a solve. Which matrix is that here, and which "
        "kernel's convolution is it?",
        success="negating the kernel inverts the convolution exponential: same cost as the forward pass.",
    )


def _centre_only(kernel: Tensor) -> Tensor:
    out = torch.zeros_like(kernel)
    ci, cj = kernel.shape[-2] // 2, kernel.shape[-1] // 2
    out[:, :, ci, cj] = kernel[:, :, ci, cj]
    return out


def check_conv_exp_logdet(fn) -> Feedback:
    """Exercise: ``fn(kernel, H, W) = log |det exp(M)| = tr M = H W tr(kernel[:, :, centre, centre])``."""
    cases = []
    for channels, height, width, seed in [(3, 4, 5, 30), (2, 7, 3, 31)]:
        k = _kernel(channels, 0.5, seed)
        centre = k[:, :, 1, 1]
        hw = height * width
        all_taps = torch.diagonal(k, dim1=0, dim2=1).sum()  # trace of every tap, summed
        cases.append(
            Case(
                f"a random {channels}-channel 3x3 kernel on a {height}x{width} image",
                (k, height, width),
                conv_exp_logdet(k, height, width),
                [
                    (
                        "that is the trace of the centre tap alone; the diagonal of M repeats it at every one "
                        "of the H*W pixels, so multiply by H*W",
                        torch.trace(centre),
                    ),
                    (
                        "you summed the diagonals of all 9 taps; only the centre tap connects a pixel to itself, "
                        "so tr M = H*W*tr(kernel[:, :, 1, 1])",
                        hw * all_taps,
                    ),
                    (
                        "you summed the diagonals of all 9 taps (and forgot H*W); only the centre tap lies on "
                        "the diagonal of M",
                        all_taps,
                    ),
                    (
                        "you summed the whole centre matrix; only its diagonal (channel c to channel c) lies on "
                        "the diagonal of M: use torch.diagonal(kernel[:, :, 1, 1]).sum()",
                        hw * centre.sum(),
                    ),
                    ("you summed every entry of the kernel; tr M only sees the centre tap's diagonal", hw * k.sum()),
                    (
                        "that is H*W*log|det(centre tap)|; the exponential's log-determinant is a trace, no "
                        "determinant needed",
                        hw * torch.linalg.slogdet(centre).logabsdet,
                    ),
                    ("only one image side is counted: multiply by H*W", height * torch.trace(centre)),
                    ("only one image side is counted: multiply by H*W", width * torch.trace(centre)),
                    (
                        "you used the corner tap kernel[:, :, 0, 0]; the tap that maps a pixel to itself is the "
                        "centre one, index k // 2 = 1",
                        hw * torch.trace(k[:, :, 0, 0]),
                    ),
                    (
                        "sign error: -H*W*tr(centre tap) is the log-determinant of the inverse exp(-M); the "
                        "forward map's is +tr M",
                        -hw * torch.trace(centre),
                    ),
                ],
            )
        )
    return run_cases(
        "conv_exp_logdet",
        fn,
        cases,
        hint="Lesson 01 related the log-determinant of an exponential to something cheap to read off its "
        "argument. Which kernel entries land on the diagonal of M (pixel p, channel c to pixel p, channel c), "
        "and how many times?",
        success="tr M = H*W*tr(centre tap): an O(C) log-determinant for a (C*H*W)-dimensional map.",
    )
