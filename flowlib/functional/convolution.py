"""The convolution exponential and the spectrum of a convolution on a torus.

The convolution exponential (Hoogeboom et al., 2020) is ``exp(M) x`` where ``M`` is
the matrix of a same-padded convolution with ``kernel``. ``M`` is never built: the
series ``x + Mx + M^2 x / 2! + ...`` only needs convolutions. The inverse is the
same series with ``-kernel`` and the log-determinant is ``tr(M)``.
Taught in ``notebooks/02_convolution_exponential.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .series import DEFAULT_TOL, MAX_TERMS, exp_series

__all__ = [
    "conv_exp",
    "inv_conv_exp",
    "conv_exp_logdet",
    "conv_matrix",
    "torus_kernel_spectrum",
    "conv_spectral_norm_bound",
]


def _check(x: Tensor, kernel: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"conv_exp expects x of shape [B, C, H, W], got {list(x.shape)}")
    if kernel.dim() != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv_exp expects a kernel of shape [C, C, k, k] with C = {x.shape[1]} (the channels of x), "
            f"got {list(kernel.shape)}"
        )
    if kernel.shape[-1] % 2 == 0 or kernel.shape[-2] % 2 == 0:
        raise ValueError(f"conv_exp needs an odd kernel size (same padding), got {list(kernel.shape[-2:])}")


def conv_exp(
    x: Tensor,
    kernel: Tensor,
    terms: int | None = None,
    tol: float = DEFAULT_TOL,
    max_terms: int = MAX_TERMS,
) -> Tensor:
    """``exp(M) x`` for the same-padded convolution ``M`` with ``kernel``, by its power series.

    Parameters
    ----------
    x : Tensor, shape ``[B, C, H, W]``
    kernel : Tensor, shape ``[C, C, k, k]``, ``k`` odd (cross-correlation, as ``F.conv2d``).
    terms : int, optional
        Use exactly this many terms (no device synchronisation: what layers use
        during training). If ``None``, add terms until the newest one is below
        ``tol`` times ``max |x|`` (checked after every term).
    tol : float
        Tolerance of the adaptive mode (relative to ``max |x|``).
    max_terms : int
        Cap of the adaptive mode: :class:`SeriesNotConverged` is raised beyond it.

    Returns
    -------
    Tensor, shape ``[B, C, H, W]``.

    Notes
    -----
    ``exp(M) x = sum_k M^k x / k!``. Each term is one convolution of the previous
    one: cost ``n`` convolutions, memory two activations (plus autograd's ``n``).
    The error after ``n`` terms is at most ``||M||^(n+1)/(n+1)! e^||M|| ||x||``
    with ``||M||_2 <= conv_spectral_norm_bound(kernel, H, W)``; :func:`conv_exp_terms` turns
    that into a number of terms. The inverse is ``exp(-M)``: :func:`inv_conv_exp`.

    Examples
    --------
    >>> x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    >>> k = 0.1 * torch.randn(3, 3, 3, 3, dtype=torch.float64)
    >>> torch.allclose(inv_conv_exp(conv_exp(x, k), k), x)
    True
    """
    _check(x, kernel)
    padding = (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    return exp_series(
        lambda t: F.conv2d(t, kernel, padding=padding),
        x,
        terms,
        tol,
        max_terms,
        lambda: (
            f"conv_exp (||M||_2 <= {float(conv_spectral_norm_bound(kernel.detach(), *x.shape[-2:])):.3g}); "
            "scale the kernel down or pass terms= explicitly"
        ),
    )


def inv_conv_exp(
    y: Tensor,
    kernel: Tensor,
    terms: int | None = None,
    tol: float = DEFAULT_TOL,
    max_terms: int = MAX_TERMS,
) -> Tensor:
    """Inverse of :func:`conv_exp`: ``exp(M)^{-1} y = exp(-M) y``, the same series with ``-kernel``."""
    return conv_exp(y, -kernel, terms=terms, tol=tol, max_terms=max_terms)


def conv_exp_logdet(kernel: Tensor, height: int, width: int) -> Tensor:
    """``log |det exp(M)| = tr(M) = H * W * tr(kernel[:, :, centre, centre])``.

    Every pixel's output channel ``c`` depends on its own input channel ``c``
    through the centre tap, so each of the ``H*W*C`` diagonal entries of ``M`` is
    ``kernel[c, c, centre, centre]`` (zero padding does not touch the centre tap).
    """
    ci, cj = kernel.shape[-2] // 2, kernel.shape[-1] // 2
    return height * width * torch.diagonal(kernel[:, :, ci, cj]).sum()


def conv_matrix(kernel: Tensor, height: int, width: int) -> Tensor:
    """The explicit ``(C*H*W) x (C*H*W)`` matrix of the same-padded convolution with ``kernel``.

    Column ``j`` is the convolution of the ``j``-th basis image (flattened in
    ``[C, H, W]`` order). Only for small images: used by tests and notebook 02 to
    compare :func:`conv_exp` with a dense ``expm``.
    """
    channels = kernel.shape[1]
    n = channels * height * width
    basis = torch.eye(n, dtype=kernel.dtype, device=kernel.device).reshape(n, channels, height, width)
    padding = (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    columns = F.conv2d(basis, kernel, padding=padding)  # [n, C, H, W]: image of basis vector j
    return columns.reshape(n, n).T


def torus_kernel_spectrum(kernel: Tensor, height: int, width: int, onesided: bool = False) -> Tensor:
    """The 2-D DFT of ``k_h x k_w`` kernels placed on the ``height x width`` torus, centre tap at ``(0, 0)``.

    Tap ``(a, b)`` (offset ``(a - k_h // 2, b - k_w // 2)`` from the centre) lands on pixel
    ``((a - k_h // 2) mod H, (b - k_w // 2) mod W)``; taps that fall on the same pixel (a kernel
    larger than the torus) add up. The result is ``fft2`` of that image over the last two axes::

        S[..., u, v] = sum_{a, b} kernel[..., a, b] exp(-2 pi i (u (a - k_h // 2) / H + v (b - k_w // 2) / W))

    so the circular *cross-correlation* ``y[h, w] = sum kernel[a, b] x[h + a - k_h // 2, w + b - k_w // 2]``
    (``conv2d`` with circular padding) has ``fft2(y) = conj(S) fft2(x)`` per channel pair (for a
    real kernel), and a channel-mixing kernel ``[C_out, C_in, k, k]`` has the ``C_out x C_in``
    matrix ``conj(S[:, :, u, v])`` at frequency ``(u, v)``. The one home of the kernel spectrum of the
    periodic layer, the CONF coupling's adaptive convolution and the convolution norm bound.

    Arguments:
        kernel: ``[..., k_h, k_w]`` (any leading axes), real.
        height, width: the torus size.
        onesided: return only the ``width // 2 + 1`` non-negative frequencies of the last axis
            (``rfft2``; the others are their conjugates).

    Returns:
        ``[..., height, width]`` complex (``[..., height, width // 2 + 1]`` when ``onesided``).
        Differentiable; cost one FFT of ``prod(leading) H W`` values.

    >>> k = torch.zeros(3, 3); k[1, 2] = 1.0  # one tap, one pixel right of the centre
    >>> s = torus_kernel_spectrum(k, 1, 4)  # exp(-2 pi i v / 4), v = 0..3
    >>> torch.allclose(s, torch.tensor([[1, -1j, -1, 1j]]))
    True
    """
    kh, kw = kernel.shape[-2:]
    rows = (torch.arange(kh, device=kernel.device) - kh // 2) % height
    cols = (torch.arange(kw, device=kernel.device) - kw // 2) % width
    index = (rows[:, None] * width + cols[None, :]).flatten()  # [k_h k_w]: flat pixel of each tap
    lead = kernel.shape[:-2]
    flat = kernel.reshape(-1, kh * kw)  # [L, k_h k_w]
    image = flat.new_zeros(flat.shape[0], height * width).index_add(1, index, flat)  # [L, H W]
    image = image.reshape(*lead, height, width)
    return torch.fft.rfft2(image) if onesided else torch.fft.fft2(image)


def conv_spectral_norm_bound(kernel: Tensor, height: int, width: int) -> Tensor:
    """Guaranteed upper bound on ``||M||_2`` of the zero-padded same convolution on ``height x width`` images.

    Parameters
    ----------
    kernel : Tensor, shape ``[C_out, C_in, k_h, k_w]``, ``k_h, k_w`` odd.
    height, width : int, the image size.

    Returns
    -------
    Tensor, scalar (differentiable in ``kernel``; no ``.item()``, no data-dependent control flow).

    Notes
    -----
    A zero-padded convolution on ``H x W`` is the *circular* convolution ``C`` on the
    larger torus ``(H + k_h // 2) x (W + k_w // 2)`` restricted to the zero-embedded
    input and cropped on output (a tap reaches at most ``k // 2`` pixels beyond either
    edge, and on that torus those land in the ``k // 2`` zero rows/columns instead of
    wrapping into the image): ``M = P_out C P_in`` with ``||P_in|| = ||P_out|| = 1``,
    so ``||M||_2 <= ||C||_2``. The 2-D DFT
    block-diagonalises ``C``: ``||C||_2 = max_omega sigma_max(K_hat(omega))`` over the
    torus frequencies, ``K_hat(omega)`` the ``C_out x C_in`` DFT of the kernel (Sedghi,
    Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019). So this is
    an actual bound, not an estimate. Measured ratio bound / true norm (float64, dense
    ``conv_matrix``): 1.004-1.010 for random ``C = 12`` kernels on ``16 x 16``,
    1.01-1.035 for ``C = 48`` on ``8 x 8``, at most 1.07 for random ``C <= 4`` kernels
    on ``8 x 8`` (1.15 on ``6 x 6``, 1.4 on ``3 x 3``: the torus is then relatively
    larger than the image), exactly 1 for a centre-tap or a single off-centre-tap
    kernel; ~5x (``C = 12``) to ~10x (``C = 48``) tighter than
    :func:`flowlib.linalg.operator_norm_bound`.

    Cost: one FFT of the kernel on the torus (:func:`torus_kernel_spectrum`; the phase of its
    centring does not change a singular value), then ``(H + k // 2) ((W + k // 2) // 2 + 1)``
    singular value computations of ``C_out x C_in`` complex matrices *without*
    autograd to find the maximising frequency, then one differentiable ``svdvals``
    at that frequency (same value; the gradient of a maximum is the gradient of its
    maximiser), which halves the cost of the full differentiable version. Measured
    on one idle CPU thread (forward + backward, per kernel): 4 ms for ``C = 12`` at
    ``16 x 16``, 10 ms for ``C = 48`` at ``8 x 8`` (the full version: 7 ms and 22 ms;
    a one-step power iteration on the image: 1 ms, but only a lower estimate). On CUDA, torch's SVD itself waits
    for the device (LAPACK-style error check); nothing is read back to Python.

    Examples
    --------
    >>> k = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    >>> dense = torch.linalg.matrix_norm(conv_matrix(k, 5, 5), ord=2)
    >>> bool(dense <= conv_spectral_norm_bound(k, 5, 5) + 1e-12)
    True
    """
    if kernel.dim() != 4 or kernel.shape[-1] % 2 == 0 or kernel.shape[-2] % 2 == 0:
        raise ValueError(
            f"conv_spectral_norm_bound expects a kernel [C_out, C_in, k, k] with odd k, got {list(kernel.shape)}"
        )
    if height < 1 or width < 1:
        raise ValueError(f"conv_spectral_norm_bound needs a positive image size, got {height} x {width}")
    kh, kw = kernel.shape[-2:]
    spectrum = torus_kernel_spectrum(kernel, height + kh // 2, width + kw // 2, onesided=True)  # [C_out, C_in, H', W'']
    per_freq = spectrum.flatten(2).permute(2, 0, 1)  # [frequencies, C_out, C_in], complex
    with torch.no_grad():
        peak = torch.linalg.svdvals(per_freq.detach())[:, 0].argmax().reshape(1)  # stays on the device
    return torch.linalg.svdvals(per_freq.index_select(0, peak))[0, 0]
