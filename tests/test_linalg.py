"""flowlib.linalg: expm against scipy and torch, its identities, gradients and error bound."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlib.linalg import expm, expm_degree, expm_taylor, operator_norm_bound, taylor_remainder_bound


def matrix_with_norm(n, norm, seed, dtype=torch.float64):
    A = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (A / A.abs().sum(0).max() * norm).to(dtype)  # 1-norm = norm


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("norm", [1e-3, 0.1, 1.0, 5.0, 20.0, 50.0])
@pytest.mark.parametrize("n", [1, 4, 9])
def test_expm_matches_scipy_and_torch(norm, n):
    for seed in range(3):
        A = matrix_with_norm(n, norm, seed)
        reference = torch.from_numpy(scipy.linalg.expm(A.numpy()))
        # exp is ill-conditioned for large ||A|| (relative condition number >= ||A||): measured
        # 2e-16 at ||A||_1 = 1, 4e-14 at 20 and 5e-12 at 50, hence a norm-dependent tolerance.
        tol64 = 1e-12 * max(1.0, norm / 5)
        assert rel_error(expm(A), reference) < tol64
        assert rel_error(expm(A), torch.linalg.matrix_exp(A)) < tol64
        assert rel_error(expm(A.float()).double(), reference) < 1e-5


def test_expm_batched_with_mixed_norms():
    A = torch.stack([matrix_with_norm(5, norm, i) for i, norm in enumerate([1e-3, 0.5, 3.0, 40.0])]).reshape(2, 2, 5, 5)
    result = expm(A)
    assert result.shape == (2, 2, 5, 5)
    for index in np.ndindex(2, 2):
        reference = torch.from_numpy(scipy.linalg.expm(A[index].numpy()))
        assert rel_error(result[index], reference) < 1e-11  # a large matrix does not cost the small ones accuracy


def test_expm_complex():
    A = torch.complex(matrix_with_norm(4, 3.0, 0), matrix_with_norm(4, 2.0, 1))
    reference = torch.from_numpy(scipy.linalg.expm(A.numpy()))
    assert rel_error(expm(A), reference) < 1e-12
    assert rel_error(expm(A.to(torch.complex64)).to(torch.complex128), reference) < 1e-5
    # exp(iB) = cos B + i sin B for real B
    B = matrix_with_norm(3, 1.5, 2)
    assert torch.allclose(
        expm(1j * B.to(torch.complex128)),
        torch.from_numpy(scipy.linalg.cosm(B.numpy()) + 1j * scipy.linalg.sinm(B.numpy())),
    )


@pytest.mark.parametrize("norm", [0.3, 4.0])
def test_expm_gradcheck(norm):
    A = matrix_with_norm(3, norm, 0).requires_grad_(True)
    assert torch.autograd.gradcheck(expm, (A,))


@pytest.mark.parametrize("norm", [0.1, 2.0, 10.0])
def test_expm_identities(norm):
    A = matrix_with_norm(5, norm, 3)
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.allclose(torch.linalg.det(expm(A)), torch.exp(torch.trace(A)), rtol=1e-10)
    assert torch.allclose(expm(A) @ expm(-A), eye, atol=1e-10 * float(torch.exp(torch.tensor(2 * norm))))
    assert torch.equal(expm(torch.zeros(2, 3, 3)), torch.eye(3).expand(2, 3, 3))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 5), norm=st.floats(1e-3, 3.0), terms=st.integers(0, 12), seed=st.integers(0, 10_000))
def test_taylor_remainder_bound_bounds_the_truncation_error(n, norm, terms, seed):
    A = matrix_with_norm(n, 1.0, seed)
    A = A / torch.linalg.matrix_norm(A, ord=2) * norm  # spectral norm = norm (sub-multiplicative)
    # reference: scipy (torch.linalg.matrix_exp was measured 6e-12 off for a 2x2 matrix of norm 0.03)
    reference = torch.from_numpy(scipy.linalg.expm(A.numpy()))
    error = float(torch.linalg.matrix_norm(expm_taylor(A, terms) - reference, ord=2))
    assert error <= taylor_remainder_bound(norm, terms) * (1 + 1e-9) + 1e-14


def test_expm_degree_and_operator_norm_bound():
    assert expm_degree(torch.float64) == 18 and expm_degree(torch.float32) == 10
    with pytest.raises(ValueError, match="float32/float64"):
        expm_degree(torch.int64)
    kernel = torch.randn(3, 3, 3, 3, dtype=torch.float64)
    from flowlib.functional import conv_matrix

    assert float(torch.linalg.matrix_norm(conv_matrix(kernel, 5, 4), ord=2)) <= float(operator_norm_bound(kernel))


def test_expm_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        expm(torch.randn(3, 4))
    with pytest.raises(ValueError, match="square"):
        expm(torch.randn(5))
    A = torch.randn(2, 3, 3)
    A[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        expm(A)
