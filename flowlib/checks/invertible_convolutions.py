"""Checkers for ``lessons/03_invertible_convolutions_exercises.ipynb``.

Single-channel periodic convolution used by the exercises (a circular cross-correlation,
as :class:`flowlib.layers.fftconv.Periodic` with ``C = 1``)::

    y[b, h, w] = sum_{a, c} kernel[a, c] x[b, (h + a - r) mod H, (w + c - r) mod W],   r = k // 2

>>> from flowlib.checks.invertible_convolutions import check_conv1x1_logdet
>>> check_conv1x1_logdet(lambda W, H, Wd: H * Wd * torch.linalg.slogdet(W).logabsdet).ok
True
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers.fftconv import circular_kernel_spectrum
from . import Case, Feedback, run_cases

__all__ = ["check_conv1x1_logdet", "check_periodic_inverse", "check_periodic_logdet", "periodic_conv", "spectrum"]

F64 = torch.float64


def spectrum(kernel: Tensor, H: int, W: int) -> Tensor:
    """``K(u, v)`` of a single-channel ``k x k`` kernel on an ``H x W`` grid, ``[H, W]`` complex.

    Equal to ``conj(fft2(c))`` where ``c`` is the kernel zero-padded to ``H x W`` and rolled so that its
    centre tap sits at ``(0, 0)``: the conjugate because the map is a cross-correlation.
    """
    return circular_kernel_spectrum(kernel[None, None], H, W)[..., 0, 0]


def periodic_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """The exercises' forward map, ``x: [B, H, W]``, ``kernel: [k, k]``: ``ifft2(K fft2(x))``."""
    return torch.fft.ifft2(spectrum(kernel, x.shape[-2], x.shape[-1]) * torch.fft.fft2(x)).real


def _kernel(size: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    kernel = 0.3 * torch.randn(size, size, generator=g, dtype=F64)
    kernel[size // 2, size // 2] += 1.0  # near the identity: invertible
    return kernel


def _uncentred_spectrum(kernel: Tensor, H: int, W: int) -> Tensor:
    padded = torch.zeros(H, W, dtype=F64)
    padded[: kernel.shape[0], : kernel.shape[1]] = kernel  # kernel at the corner, not centred on pixel 0
    return torch.fft.fft2(padded).conj()  # conj: a cross-correlation (see spectrum)


def check_conv1x1_logdet(fn) -> Feedback:
    """Exercise: ``fn(W, H, Wd)`` is ``log |det J|`` of the 1x1 convolution with matrix ``W`` on ``H x Wd`` images."""
    cases = []
    g = torch.Generator().manual_seed(0)
    for C, H, Wd, flip_sign in [(3, 4, 5, True), (4, 2, 3, False)]:
        W = torch.randn(C, C, generator=g, dtype=F64)
        if flip_sign == (torch.linalg.det(W) > 0):
            W[0] = -W[0]  # first case: det W < 0, where torch.logdet gives NaN
        logabs = torch.linalg.slogdet(W).logabsdet
        cases.append(
            Case(
                f"a random {C}x{C} W (det {'< 0' if flip_sign else '> 0'}) on {H}x{Wd} images",
                (W, H, Wd),
                H * Wd * logabs,
                nonfinite=(
                    "the result is NaN or Inf. det W < 0 here, and torch.logdet (or log(det W)) is NaN for a "
                    "negative determinant. The change of variables needs log|det W|: use "
                    "torch.linalg.slogdet(W).logabsdet"
                ),
                mistakes=[
                    (
                        "you returned log|det W| only: the same W acts at each of the H*W pixels, so the Jacobian is "
                        "block diagonal with H*W copies of W and the log-determinant is H*W*log|det W|",
                        logabs,
                    ),
                    ("you multiplied by H + W; the number of pixels is H * W", (H + Wd) * logabs),
                    ("you returned the determinant, not its logarithm", H * Wd * torch.linalg.det(W).abs()),
                    (
                        "you used the diagonal of W as if it were triangular; use torch.linalg.slogdet",
                        H * Wd * torch.log(torch.diagonal(W).abs()).sum(),
                    ),
                    (
                        "sign error: -H*W*log|det W| is the log-determinant of the inverse layer (W^-1 at every "
                        "pixel); the forward layer's is +H*W*log|det W|",
                        -H * Wd * logabs,
                    ),
                ],
            )
        )
    return run_cases(
        "conv1x1_logdet",
        fn,
        cases,
        hint="Think of the Jacobian's structure (exercise 1). And det W may be negative: which torch function "
        "returns log|det| even then?",
        success="log|det J| = H W log|det W|: the 1x1 convolution is H*W copies of W.",
    )


def check_periodic_inverse(fn) -> Feedback:
    """Exercise: ``fn(y, kernel)`` returns ``x`` with ``periodic_conv(x, kernel) == y`` (``y: [B, H, W]``)."""
    cases = []
    for H, W, k, seed in [(6, 7, 3, 0), (8, 5, 5, 1)]:
        kernel = _kernel(k, seed)
        y = torch.randn(2, H, W, generator=torch.Generator().manual_seed(seed + 10), dtype=F64)
        K = spectrum(kernel, H, W)
        y_hat = torch.fft.fft2(y)
        cases.append(
            Case(
                f"a random {k}x{k} kernel on {H}x{W} images",
                (y, kernel),
                torch.fft.ifft2(y_hat / K).real,
                [
                    (
                        "you applied the convolution (multiplied by K) instead of inverting it (divide by K)",
                        torch.fft.ifft2(y_hat * K).real,
                    ),
                    (
                        "the kernel is not centred: placing it at the corner of an H x W array shifts the result "
                        "by r = k//2 "
                        "pixels; roll it so that its centre tap sits at index (0, 0) (torch.roll by -r)",
                        torch.fft.ifft2(y_hat / _uncentred_spectrum(kernel, H, W)).real,
                    ),
                    (
                        "index sign error: you inverted the convolution with the flipped kernel (x[h - a], a true "
                        "convolution); the layer is a cross-correlation (x[h + a]), whose spectrum is the complex "
                        "conjugate of fft2 of the centred kernel",
                        torch.fft.ifft2(y_hat / spectrum(kernel.flip(0, 1), H, W)).real,
                    ),
                    (
                        "you used fft2 of the kernel at the corner of the grid and without the conjugate: both the "
                        "centring (roll the centre tap to (0, 0)) and the cross-correlation (conjugate) are missing",
                        torch.fft.ifft2(y_hat / _uncentred_spectrum(kernel, H, W).conj()).real,
                    ),
                    (
                        "sign error: your x is the negative of the answer (did you divide by -K, or subtract?)",
                        -torch.fft.ifft2(y_hat / K).real,
                    ),
                ],
            )
        )
    return run_cases(
        "periodic_inverse",
        fn,
        cases,
        hint="The convolution theorem turns the periodic convolution into a product, one factor per frequency. "
        "How do you undo a product? (Mind where the kernel's centre sits, and that this is a cross-correlation.)",
        success="Division in frequency space inverts the periodic convolution: one division per frequency.",
        tol=1e-8,
    )


def check_periodic_logdet(fn) -> Feedback:
    """Exercise: ``fn(kernel, H, W)`` is ``log |det|`` of the single-channel periodic convolution."""
    cases = []
    for H, W, k, seed in [(6, 7, 3, 2), (5, 8, 3, 3)]:
        kernel = _kernel(k, seed)
        K = spectrum(kernel, H, W)
        half = torch.fft.rfft2(
            torch.roll(torch.nn.functional.pad(kernel, (0, W - k, 0, H - k)), (-(k // 2), -(k // 2)), (0, 1))
        )
        cases.append(
            Case(
                f"a random {k}x{k} kernel on a {H}x{W} grid",
                (kernel, H, W),
                torch.log(K.abs()).sum(),
                nonfinite="the result is NaN or Inf: a logarithm of a negative (or zero) number. log|det| needs "
                "the modulus |K(u, v)| of each complex frequency response",
                mistakes=[
                    (
                        "you summed over the rfft2 frequencies only (about half of them); the determinant is the "
                        "product "
                        "over all H*W frequencies: use torch.fft.fft2",
                        torch.log(half.abs()).sum(),
                    ),
                    (
                        "you used the real part of K(u, v); |det| needs the modulus |K(u, v)|",
                        torch.log(K.real.abs()).sum(),
                    ),
                    (
                        "you treated the layer as a 1x1 convolution (H W log|centre tap|); every tap contributes "
                        "through "
                        "K(u, v)",
                        H * W * torch.log(kernel[k // 2, k // 2].abs()),
                    ),
                    ("you returned the determinant itself, not its logarithm", K.abs().prod()),
                    (
                        "you averaged over the frequencies; the log-determinant is the sum of log|K(u, v)|",
                        torch.log(K.abs()).mean(),
                    ),
                    (
                        "you took the FFT of the k x k kernel itself (k*k frequencies); the map acts on H x W "
                        "images, so pad the kernel to H x W first: there are H*W frequencies",
                        torch.log(torch.fft.fft2(kernel).abs()).sum(),
                    ),
                    (
                        "sign error: -sum log|K(u, v)| is the log-determinant of the inverse (division by K); the "
                        "forward convolution's is +sum log|K(u, v)|",
                        -torch.log(K.abs()).sum(),
                    ),
                ],
            )
        )
    return run_cases(
        "periodic_logdet",
        fn,
        cases,
        hint="In the Fourier basis the periodic convolution is diagonal. What is the determinant of a diagonal "
        "matrix, and how many diagonal entries does this one have?",
        success="log|det| is the sum of log|K(u, v)| over the H*W frequencies.",
    )
