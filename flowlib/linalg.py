"""Matrix exponential and the small linear-algebra helpers the layers share.

The matrix exponential ``exp(A) = sum_k A^k / k!`` maps *any* square matrix to an
invertible one, with

* ``exp(A)^{-1} = exp(-A)``           (inverse for free),
* ``log |det exp(A)| = tr(A)``         (log-determinant for free),

which is why Xiao & Liu (2020) and Hoogeboom et al. (2020) build flows from it.
Taught in ``notebooks/01_matrix_exponential.ipynb``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["expm", "expm_taylor", "expm_degree", "taylor_remainder_bound", "operator_norm_bound"]

# Taylor degree m and scaling threshold theta per dtype: after scaling, ||A / 2^s||_1 <= theta,
# and the truncated series has relative error <= taylor_remainder_bound(theta, m) (see expm).
_DEGREE = {torch.float64: 18, torch.float32: 10, torch.complex128: 18, torch.complex64: 10}
_THETA = 1.0


def taylor_remainder_bound(norm: float, terms: int) -> float:
    """Bound on ``||exp(A) - sum_{k<=terms} A^k/k!||`` relative to ``||exp(A)||`` scale.

    For any sub-multiplicative norm with ``||A|| <= norm``, the tail of the series is
    ``||sum_{k>terms} A^k/k!|| <= norm^(terms+1) / (terms+1)! * exp(norm)``.
    """
    return norm ** (terms + 1) / math.factorial(terms + 1) * math.exp(norm)


def expm_degree(dtype: torch.dtype) -> int:
    """Taylor degree :func:`expm` uses for ``dtype`` (18 for float64, 10 for float32)."""
    if dtype not in _DEGREE:
        raise ValueError(f"expm supports float32/float64 (and complex) tensors, got {dtype}")
    return _DEGREE[dtype]


def expm_taylor(A: Tensor, terms: int) -> Tensor:
    """Truncated series ``sum_{k=0}^{terms} A^k / k!`` by Horner's rule (``terms`` matmuls).

    Used by :func:`expm` after scaling, and by notebook 01 to show how the
    truncation error falls with the number of terms. No scaling: accurate only
    for small ``||A||``.
    """
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device).expand_as(A)
    result = eye
    for k in range(terms, 0, -1):  # I + A/1 (I + A/2 (I + ... (I + A/terms)))
        result = eye + (A @ result) / k
    return result


def expm(A: Tensor, max_squarings: int | None = None) -> Tensor:
    """Matrix exponential of a (batch of) square matrices, differentiable.

    Parameters
    ----------
    A : Tensor, shape ``(..., n, n)``, float32/float64 (or complex)

    max_squarings : int, optional
        If given, never square more than this many times and never read a value
        back from the device: no synchronisation and a fixed graph, which is what
        layers use inside ``torch.compile``d training steps. Matrices with
        ``||A||_1 > 2^max_squarings`` then get the weaker bound
        ``taylor_remainder_bound(||A||_1 / 2^max_squarings, m)``; NaN input is
        not detected. Default: as many squarings as each matrix needs.

    Returns
    -------
    Tensor, shape ``(..., n, n)``: ``exp(A)``.

    Notes
    -----
    Scaling and squaring with a Taylor series (Moler & Van Loan 2003, method 3):
    each matrix is scaled by ``2^-s`` so that ``||A 2^-s||_1 <= 1``, the series is
    truncated after ``m`` terms (``m = 18`` in float64, ``10`` in float32) and the
    result squared ``s`` times. The truncation error of the scaled series is at most
    ``e / (m+1)!`` (2e-17 for float64, 7e-8 for float32: below unit round-off), see
    :func:`taylor_remainder_bound`. That is the truncation error only: the rounding of
    the ``m + s`` matrix products adds up to about ``(m + s) n eps`` relative error
    (classical ``n eps`` bound per product, ``eps`` the unit round-off), which dominates in
    float32 for large ``n``: measured against float64 (notebook 01, section 4) 1e-6 at
    ``n = 16``, 5e-6 at 64 and 2e-5 at 256 (``torch.linalg.matrix_exp``: 2.3e-5 at 256).
    Where that matters, compute in float64 and round: ``expm(A.double()).float()``
    (about 5e-8, cheap for ``C x C`` channel matrices). Cost: ``m + s`` matrix products, memory a few
    copies of ``A``. ``s`` is chosen per matrix of the batch; matrices that need
    fewer squarings are left unchanged by the extra ones (``torch.where``), so one
    large matrix does not cost accuracy to the others. Gradients flow through the
    matrix products (exact derivative of the computed approximation).

    ``torch.linalg.matrix_exp`` uses Padé/Taylor with fewer products; this version
    is written to be read, and its error bound to be checked
    (``tests/test_linalg.py`` compares both with ``scipy.linalg.expm``).

    Examples
    --------
    >>> A = torch.randn(3, 3, dtype=torch.float64)
    >>> torch.allclose(expm(A) @ expm(-A), torch.eye(3, dtype=torch.float64))
    True
    >>> torch.allclose(torch.linalg.det(expm(A)), torch.exp(torch.trace(A)))
    True
    >>> expm(torch.zeros(2, 2, 2))[0]
    tensor([[1., 0.],
            [0., 1.]])
    """
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"expm expects square matrices of shape (..., n, n), got {list(A.shape)}")
    degree = expm_degree(A.dtype)
    norm = A.detach().abs().sum(dim=-2).amax(dim=-1)  # 1-norm: max column sum, shape (...)
    squarings = torch.clamp(torch.ceil(torch.log2(norm / _THETA)), min=0)  # s per matrix, shape (...)
    if max_squarings is None:
        if not torch.isfinite(norm).all():
            raise ValueError("expm got a matrix with NaN or Inf entries")
        s_max = int(squarings.max()) if squarings.numel() else 0
    else:
        squarings = squarings.clamp(max=max_squarings)
        s_max = max_squarings
    scale = torch.pow(2.0, -squarings).to(A.real.dtype if A.is_complex() else A.dtype)
    result = expm_taylor(A * scale[..., None, None], degree)
    for k in range(s_max):
        squared = result @ result
        result = torch.where((squarings > k)[..., None, None], squared, result)
    return result


def operator_norm_bound(kernel: Tensor) -> Tensor:
    """Upper bound on the spectral norm of the (zero-padded) convolution with ``kernel``.

    ``kernel`` has shape ``(C_out, C_in, k, k)``. The convolution is a sum over taps
    ``(i, j)`` of a shift (norm <= 1) times the matrix ``kernel[:, :, i, j]``, so
    ``||M||_2 <= sum_{i,j} ||kernel[:, :, i, j]||_2 <= sum_{i,j} ||kernel[:, :, i, j]||_F``.
    The Frobenius form is cheap, differentiable and independent of the image size,
    but loose: measured 5x the true norm for random ``C = 12`` kernels, 10x for
    ``C = 48``, 1.1-2x for a single tap (Frobenius over spectral norm of one
    ``C x C`` matrix). The layers therefore use the tight, still guaranteed
    :func:`flowlib.functional.conv_spectral_norm_bound`; notebook 02 compares the two.
    """
    return kernel.flatten(2).norm(dim=0).norm(dim=0).sum()  # sum over taps of ||K_tap||_F
