"""flowlib.functional: the convolution exponential against dense matrix exponentials."""

import math

import pytest
import scipy.linalg
import torch

import flowlib.functional as Fn
from flowlib.linalg import operator_norm_bound


def kernel_with_bound(channels, size, bound, seed):
    k = torch.randn(channels, channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return k * (bound / operator_norm_bound(k))


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_conv_exp_matches_dense_expm(size, channels):
    H, W = 4, 6  # non-square
    kernel = kernel_with_bound(channels, size, 1.5, seed=size * 10 + channels)
    x = torch.randn(2, channels, H, W, dtype=torch.float64)
    dense = torch.from_numpy(scipy.linalg.expm(Fn.conv_matrix(kernel, H, W).numpy()))  # [D, D]
    expected = (x.reshape(2, -1) @ dense.T).reshape(x.shape)
    assert (Fn.conv_exp(x, kernel, tol=1e-14) - expected).abs().max() < 1e-12
    terms = Fn.conv_exp_terms(1.5, 1e-13)
    assert (Fn.conv_exp(x, kernel, terms=terms) - expected).abs().max() < 1e-12
    y = Fn.conv_exp(x, kernel, terms=terms)
    assert (Fn.inv_conv_exp(y, kernel, terms=terms) - x).abs().max() < 1e-12


def test_conv_matrix_columns_are_convolutions():
    kernel = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64)
    direct = torch.nn.functional.conv2d(x, kernel, padding=1)
    assert torch.allclose(Fn.conv_matrix(kernel, 3, 5) @ x.reshape(-1), direct.reshape(-1))


@pytest.mark.parametrize("size", [1, 3, 5])
def test_logdet_is_the_trace(size):
    kernel = kernel_with_bound(3, size, 1.0, seed=size)
    H, W = 3, 5
    matrix = Fn.conv_matrix(kernel, H, W)
    logdet = Fn.conv_exp_logdet(kernel, H, W)
    assert torch.allclose(logdet, torch.trace(matrix))
    assert torch.allclose(logdet, torch.linalg.slogdet(torch.linalg.matrix_exp(matrix)).logabsdet)


def count_convs(monkeypatch):
    calls = []
    real = torch.nn.functional.conv2d

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting)
    return calls


def test_adaptive_mode_uses_fewer_terms_for_small_kernels(monkeypatch):
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    counts = {}
    for bound in (0.01, 0.5, 3.0):
        calls = count_convs(monkeypatch)
        Fn.conv_exp(x, kernel_with_bound(3, 3, bound, 0), tol=1e-10)
        counts[bound] = len(calls)
        monkeypatch.undo()
    assert counts[0.01] < counts[0.5] < counts[3.0], counts
    assert counts[0.01] <= 5 and counts[3.0] <= 40, counts
    calls = count_convs(monkeypatch)
    Fn.conv_exp(x, kernel_with_bound(3, 3, 3.0, 0), terms=7)
    assert len(calls) == 7  # fixed mode: exactly `terms` convolutions


def test_adaptive_mode_raises_when_max_terms_is_too_small():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(Fn.SeriesNotConverged, match="did not converge.*3 terms.*scale the kernel down"):
        Fn.conv_exp(x, kernel_with_bound(2, 3, 4.0, 0), tol=1e-12, max_terms=3)
    with pytest.raises(Fn.SeriesNotConverged, match="needs more than 5 terms"):
        Fn.conv_exp_terms(10.0, 1e-8, max_terms=5)


@pytest.mark.parametrize("bound, tol", [(0.1, 1e-8), (0.5, 1e-6), (0.5, 1e-12), (2.0, 1e-10), (5.0, 1e-6)])
def test_conv_exp_terms_bound_holds(bound, tol):
    kernel = kernel_with_bound(2, 3, bound, seed=1)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    n = Fn.conv_exp_terms(bound, tol)
    exact = Fn.conv_exp(x, kernel, terms=n + 30)
    error = (Fn.conv_exp(x, kernel, terms=n) - exact).flatten(1).norm(dim=1)
    assert (error <= tol * x.flatten(1).norm(dim=1)).all()
    if n > 0:  # and n is the fewest terms the bound allows
        assert Fn.conv_exp_terms(bound, tol) == n and not Fn.conv_exp_terms(bound, tol * 1e3) > n


def test_conv_exp_bad_shapes():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        Fn.conv_exp(torch.randn(2, 4, 4), torch.zeros(2, 2, 3, 3))
    with pytest.raises(ValueError, match="C = 2"):
        Fn.conv_exp(x, torch.zeros(3, 3, 3, 3))
    with pytest.raises(ValueError, match="C = 2"):
        Fn.conv_exp(x, torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="odd kernel size"):
        Fn.conv_exp(x, torch.zeros(2, 2, 2, 2))


@pytest.mark.parametrize(
    "c_out, c_in, size, H, W", [(2, 2, 3, 4, 5), (3, 1, 3, 3, 3), (2, 4, 1, 4, 4), (1, 2, 5, 5, 4)]
)
def test_conv_spectral_norm_bound_is_a_tight_bound(c_out, c_in, size, H, W):
    kernel = torch.randn(c_out, c_in, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    basis = torch.eye(c_in * H * W, dtype=torch.float64).reshape(-1, c_in, H, W)
    dense = torch.nn.functional.conv2d(basis, kernel, padding=size // 2).reshape(basis.shape[0], -1)
    true_norm = float(torch.linalg.matrix_norm(dense, ord=2))
    bound = float(Fn.conv_spectral_norm_bound(kernel, H, W))
    assert true_norm <= bound * (1 + 1e-12)
    assert bound <= 2 * true_norm  # measured ratios 1.0-1.5 on these tiny images (close to 1 on large ones)
    assert bound <= float(operator_norm_bound(kernel))
    if size == 1:  # 1x1: exactly the matrix norm
        assert abs(bound - true_norm) < 1e-10


def tap_kernel(channels, taps, seed):
    """Random ``[C, C, 3, 3]`` kernel, zero outside the given taps (``None``: all taps)."""
    k = torch.randn(channels, channels, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if taps is None:
        return k
    mask = torch.zeros(3, 3, dtype=torch.float64)
    for i, j in taps:
        mask[i, j] = 1
    return k * mask


@pytest.mark.parametrize("taps", [None, [(1, 1)], [(0, 2)], [(2, 1)]], ids=["random", "centre", "corner", "below"])
@pytest.mark.parametrize("channels, H, W", [(1, 8, 8), (3, 8, 8), (4, 8, 9), (2, 9, 8)])
def test_conv_spectral_norm_bound_is_within_10_percent_on_8x8(taps, channels, H, W):
    """Guaranteed (>= the dense norm) and tight: bound / true <= 1.1 at 8 x 8 and above (measured <= 1.07)."""
    for seed in range(3):
        kernel = tap_kernel(channels, taps, seed)
        true_norm = float(torch.linalg.matrix_norm(Fn.conv_matrix(kernel, H, W), ord=2))
        bound = float(Fn.conv_spectral_norm_bound(kernel, H, W))
        assert true_norm <= bound * (1 + 1e-12)
        assert bound <= 1.1 * true_norm, (seed, bound / true_norm)
        if taps is not None:  # a single tap: a (partial) shift times one C x C matrix, norm exactly ||K_tap||_2
            assert abs(bound - true_norm) < 1e-10


def test_conv_spectral_norm_bound_gradient_and_errors():
    kernel = tap_kernel(2, None, 7).requires_grad_()
    assert torch.autograd.gradcheck(lambda k: Fn.conv_spectral_norm_bound(k, 5, 6), (kernel,))
    with pytest.raises(ValueError, match="odd k"):
        Fn.conv_spectral_norm_bound(torch.zeros(2, 2, 2, 2), 4, 4)
    with pytest.raises(ValueError, match="positive image size"):
        Fn.conv_spectral_norm_bound(torch.zeros(2, 2, 3, 3), 0, 4)


def test_adjacency_helpers():
    A = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    assert float(torch.linalg.matrix_norm(Fn.normalize_adjacency(A), ord=2)) <= 1 + 1e-12
    assert torch.equal(Fn.normalize_adjacency(torch.zeros(3, 3)), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="square"):
        Fn.normalize_adjacency(torch.ones(2, 3))
    grid = Fn.grid_adjacency(2, 3)
    assert grid.sum(1).tolist() == [2, 3, 2, 2, 3, 2]  # node degrees of the 2 x 3 grid


def _explicit_spectrum(kernel, H, W):
    """``sum_{a, b} kernel[..., a, b] exp(-2 pi i (u (a - r_h) / H + v (b - r_w) / W))`` term by term."""
    kh, kw = kernel.shape[-2:]
    out = torch.zeros(*kernel.shape[:-2], H, W, dtype=torch.complex128)
    u, v = torch.arange(H, dtype=torch.float64)[:, None], torch.arange(W, dtype=torch.float64)[None, :]
    for a in range(kh):
        for b in range(kw):
            phase = torch.exp(-2j * math.pi * (u * (a - kh // 2) / H + v * (b - kw // 2) / W))
            out = out + kernel[..., a, b, None, None].to(torch.complex128) * phase
    return out


@pytest.mark.parametrize("k, H, W", [(3, 5, 4), (5, 2, 3), (1, 3, 3), (3, 1, 6)])  # (5, 2, 3): taps wrap and add
def test_torus_kernel_spectrum_is_the_dft_of_the_centred_taps(k, H, W):
    kernel = torch.randn(2, 3, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k + H))
    full = Fn.torus_kernel_spectrum(kernel, H, W)
    torch.testing.assert_close(full, _explicit_spectrum(kernel, H, W), rtol=0, atol=1e-12)
    torch.testing.assert_close(Fn.torus_kernel_spectrum(kernel, H, W, onesided=True), full[..., : W // 2 + 1])
    kernel.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: Fn.torus_kernel_spectrum(t, H, W).abs().sum(), (kernel,))


def test_rescale_to_bound_meets_the_limit_and_leaves_small_weights_alone():
    kernel = torch.randn(3, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bound = Fn.conv_spectral_norm_bound(kernel, 6, 6)
    limit = 0.5 * float(bound)
    scaled = Fn.rescale_to_bound(kernel, bound, limit)
    assert float(Fn.conv_spectral_norm_bound(scaled, 6, 6)) == pytest.approx(limit, rel=1e-12)
    assert torch.equal(Fn.rescale_to_bound(kernel, bound, 2 * float(bound)), kernel)
    assert torch.equal(Fn.rescale_to_bound(torch.zeros(2, 2), torch.tensor(0.0), 1.0), torch.zeros(2, 2))


def test_logdet_series_exact_traces_and_per_sample_terms():
    """With probes e_i sqrt(D) the estimate is the truncated series with exact traces, per sample length."""
    A = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    probes = 2**0.5 * torch.eye(2, dtype=torch.float64)[:, None].expand(2, 3, 2)  # [P = 2, B = 3, D = 2]
    terms = torch.tensor([1, 2, 5])

    def truncated(n):
        return sum((-1) ** (k + 1) * torch.trace(torch.linalg.matrix_power(A, k)) / k for k in range(1, n + 1))

    estimate = Fn.logdet_series(x @ A.T, x, probes, terms)
    torch.testing.assert_close(estimate, torch.stack([truncated(int(n)) for n in terms]), rtol=0, atol=1e-14)
    # Russian-roulette weights: term k > n_exact divided by (1 - p)^(k - n_exact)
    weighted = Fn.logdet_series(x @ A.T, x, probes, 3, roulette_p=0.5, n_exact=1)
    expected = truncated(1) + sum(
        (-1) ** (k + 1) * torch.trace(torch.linalg.matrix_power(A, k)) / k / 0.5 ** (k - 1) for k in (2, 3)
    )
    torch.testing.assert_close(weighted, expected.expand(3), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="roulette_p must be a probability"):
        Fn.logdet_series(x @ A.T, x, probes, 3, roulette_p=1.5)
