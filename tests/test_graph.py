"""Graph convolution exponential and the graph flow example."""

import pytest
import torch

import flowlib
from flowlib import functional as Fn
from flowlib.graphs import GraphFlow, fit, make_graph, make_graph_dataset
from flowlib.layers.convexp import GraphConvExp
from flowlib.testing import brute_force_logdet, flow_errors, perturb_


def random_graph(n, seed, self_loops=False):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, n, generator=g) < 0.4).double()
    a = ((a + a.T) > 0).double()
    if not self_loops:
        a.fill_diagonal_(0)
    return a


@pytest.mark.parametrize("self_loops", [False, True])
def test_inverse_and_logdet_vs_brute_force(self_loops):
    torch.manual_seed(0)
    A = random_graph(5, 1, self_loops)
    layer = GraphConvExp((5, 3), adjacency=A).double().eval()
    perturb_(layer, 0.5, torch.Generator().manual_seed(2))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-10, errors
    # logdet = tr M = N tr(W0) + tr(A_norm) tr(W1), and the dense matrix exponential agrees
    w0, w1 = (w.detach() for w in layer.effective_weights())
    a_norm = layer.adjacency
    eye = torch.eye(5, dtype=torch.float64)
    M = torch.kron(eye, w0.T.contiguous()) + torch.kron(a_norm, w1.T.contiguous())  # on row-major vec([N, C])
    y, logdet = layer(x)
    assert torch.allclose(y.reshape(2, -1), x.reshape(2, -1) @ torch.linalg.matrix_exp(M).T, atol=1e-12)
    assert torch.allclose(logdet, torch.trace(M).expand(2))
    if not self_loops:
        assert torch.allclose(logdet, 5 * torch.trace(w0).expand(2))
    assert float(torch.linalg.matrix_norm(M, ord=2)) <= layer.rho + 1e-12


def dense_graph_map(layer):
    """``M = I (x) W0^T + A_norm (x) W1^T`` on row-major ``vec(x [N, C])``."""
    w0, w1 = (w.detach() for w in layer.effective_weights())
    eye = torch.eye(layer.adjacency.shape[0], dtype=torch.float64)
    return torch.kron(eye, w0.T.contiguous()) + torch.kron(layer.adjacency, w1.T.contiguous())


@pytest.mark.parametrize("seed", range(3))
def test_symmetric_graph_bound_is_the_exact_norm_so_rho_is_reached(seed):
    A = random_graph(7, seed)
    layer = GraphConvExp((7, 3), adjacency=A).double()
    perturb_(layer, 10.0, torch.Generator().manual_seed(seed))  # far above rho: rescaled onto it
    true_norm = float(torch.linalg.matrix_norm(dense_graph_map(layer), ord=2))
    assert layer.rho * (1 - 2e-6) <= true_norm <= layer.rho * (1 + 1e-12), true_norm  # margin: 1e-6 widening
    w0, w1 = layer.self_weight.detach(), layer.neighbour_weight.detach()
    exact = Fn.graph_conv_exp_norm_bound(layer.adjacency, w0, w1, layer.eigenvalue_range)
    loose = Fn.graph_conv_exp_norm_bound(layer.adjacency, w0, w1)  # without the spectrum: triangle inequality
    assert float(exact) <= float(loose)
    eye = torch.eye(7, dtype=torch.float64)
    raw = torch.kron(eye, w0.T.contiguous()) + torch.kron(layer.adjacency, w1.T.contiguous())
    assert abs(float(exact) / float(torch.linalg.matrix_norm(raw, ord=2)) - 1) < 2e-6


def test_directed_graph_keeps_a_guaranteed_bound():
    A = (torch.rand(6, 6, generator=torch.Generator().manual_seed(3)) < 0.4).double()
    A.fill_diagonal_(0)
    layer = GraphConvExp((6, 2), adjacency=A).double()
    assert layer.eigenvalue_range is None  # not symmetric
    perturb_(layer, 10.0, torch.Generator().manual_seed(4))
    true_norm = float(torch.linalg.matrix_norm(dense_graph_map(layer), ord=2))
    assert true_norm <= layer.rho * (1 + 1e-12)


def test_graph_terms_override_and_bad_values():
    A = random_graph(5, 1)
    layer = GraphConvExp((5, 2), adjacency=A, train_terms=6, eval_terms=13).double()
    assert (layer.terms, layer.eval().terms) == (6, 13)
    perturb_(layer, 3.0, torch.Generator().manual_seed(5))
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    M = dense_graph_map(layer)
    series, power = torch.eye(10, dtype=torch.float64), torch.eye(10, dtype=torch.float64)
    for i in range(1, 14):
        power = power @ M / i
        series = series + power
    assert torch.allclose(layer(x)[0].reshape(2, -1), x.reshape(2, -1) @ series.T, atol=1e-13)
    with pytest.raises(ValueError, match="train_terms must be an integer >= 1"):
        GraphConvExp((5, 2), adjacency=A, train_terms=0)
    with pytest.raises(ValueError, match="rho > 0"):
        GraphConvExp((5, 2), adjacency=A, rho=-1.0)


def test_permutation_equivariance():
    torch.manual_seed(3)
    A = random_graph(6, 4)
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    perm = torch.randperm(6)
    layer = GraphConvExp((6, 2), adjacency=A).double().eval()
    permuted = GraphConvExp((6, 2), adjacency=A[perm][:, perm]).double().eval()
    permuted.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "adjacency"}, strict=False)
    y, logdet = layer(x)
    y_p, logdet_p = permuted(x[:, perm])
    assert torch.allclose(y_p, y[:, perm], atol=1e-12)
    assert torch.allclose(logdet_p, logdet)


def test_image_shapes_use_the_grid_graph():
    layer = flowlib.layers.make("graph_convexp", shape=(3, 4, 5)).double().eval()
    assert layer.adjacency.shape == (20, 20)
    grid = Fn.grid_adjacency(4, 5, torch.float64)
    assert grid.sum() == 2 * (4 * 4 + 3 * 5) and torch.equal(grid, grid.T)  # 4-neighbour edges, undirected
    assert torch.allclose(layer.adjacency, grid / 4)  # max degree 4
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    nodes = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
    w0, w1 = layer.effective_weights()
    expected = Fn.graph_conv_exp(nodes, layer.adjacency, w0, w1, terms=layer.terms)
    y, _ = layer(x)
    assert torch.allclose(y.flatten(2).transpose(1, 2), expected)


@pytest.mark.parametrize(
    "adjacency, match",
    [
        (torch.ones(4, 5), "square"),
        (torch.ones(3, 3), "adjacency has 3 nodes"),
        (torch.ones(2, 2, 2), "square"),
        (None, "needs adjacency"),
    ],
)
def test_bad_adjacency_raises(adjacency, match):
    with pytest.raises(ValueError, match=match):
        flowlib.layers.make("graph_convexp", shape=(4, 2), adjacency=adjacency)


def test_bad_adjacency_for_images_and_bad_shape():
    with pytest.raises(ValueError, match="H\\*W = 16"):
        GraphConvExp((2, 4, 4), adjacency=torch.ones(5, 5))
    with pytest.raises(ValueError, match="shape=\\(N, C\\)"):
        GraphConvExp((4,), adjacency=torch.ones(4, 4))
    with pytest.raises(ValueError, match="\\[N, N\\] = \\[4, 4\\]"):
        Fn.graph_conv_exp(torch.randn(1, 4, 2), torch.ones(3, 3), torch.eye(2), torch.eye(2))


def test_graph_flow_is_a_valid_flow():
    torch.manual_seed(5)
    A = make_graph(5, 3, torch.Generator().manual_seed(0))
    model = GraphFlow(A, features=2, blocks=1, hidden=8).double()
    model.log_prob(torch.randn(16, 5, 2, dtype=torch.float64))  # actnorm initialisation
    perturb_(model, 0.1, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    errors = flow_errors(model.flow, x)
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-10, errors
    z = model.flow(x)[0]
    base = -0.5 * z.square().sum((1, 2)) - 5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    assert torch.allclose(model.log_prob(x), base + brute_force_logdet(lambda t: model.flow(t)[0], x))
    assert model.sample(3).shape == (3, 5, 2)


@pytest.mark.parametrize("use_convexp", [True, False])
def test_fit_lowers_the_negative_log_likelihood(use_convexp):
    torch.manual_seed(6)
    data = make_graph_dataset(num_samples=256, num_nodes=8, seed=1)
    assert data.x.shape == (256, 8, 2) and torch.equal(data.adjacency, data.adjacency.T)
    model = GraphFlow(data.adjacency, features=2, blocks=1, hidden=16, use_convexp=use_convexp)
    assert any(isinstance(m, GraphConvExp) for m in model.modules()) == use_convexp
    losses = fit(model, data.x, steps=100, batch_size=64, lr=1e-2)
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < first - (0.15 if use_convexp else 0.05), (first, last)  # measured drops: 0.29 and 0.09 nats


def test_graph_actnorm_flag_is_saved_and_a_reloaded_model_does_not_reinitialise():
    torch.manual_seed(7)
    A = make_graph(5, 3, torch.Generator().manual_seed(0))
    model = GraphFlow(A, features=2, blocks=1, hidden=8).double()
    model.log_prob(3 + 2 * torch.randn(16, 5, 2, dtype=torch.float64))  # initialises on this batch
    state = model.state_dict()
    flags = [k for k in state if k.endswith("initialized")]
    assert flags and all(bool(state[k]) for k in flags)
    reloaded = GraphFlow(A, features=2, blocks=1, hidden=8).double()
    reloaded.load_state_dict(state)
    other = torch.randn(16, 5, 2, dtype=torch.float64)  # re-initialising on it would change the actnorm parameters
    assert reloaded.training
    assert torch.equal(reloaded.log_prob(other), model.log_prob(other))
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())
