"""A small normalizing flow on graphs: synthetic data, ``GraphFlow`` and ``fit``.

The example of Hoogeboom et al. (2020, graph convolution exponential) in miniature:
node features on a fixed graph, modelled by a flow whose layers are permutation
equivariant (actnorm per channel, graph convolution exponential, couplings whose
conditioner passes messages along the edges). ``use_convexp`` switches the linear
layer on or off, so a notebook or an experiment can compare the two::

    data = make_graph_dataset()
    model = GraphFlow(data.adjacency, features=data.x.shape[-1])
    losses = fit(model, data.x, steps=200)     # NLL in nats per node feature

Everything runs on the CPU in a few seconds. Taught in
``notebooks/02_convolution_exponential.ipynb`` (graph section).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .core import Flow, FlowDistribution, Sequential
from .functional import normalize_adjacency
from .layers.convexp import GraphConvExp
from .layers.linear import ActNorm

__all__ = ["GraphDataset", "make_graph", "make_graph_dataset", "GraphActNorm", "GraphCoupling", "GraphFlow", "fit"]


class GraphDataset(NamedTuple):
    """``x``: node features ``[S, N, C]``; ``adjacency``: 0/1 ``[N, N]`` (symmetric, no self loops)."""

    x: Tensor
    adjacency: Tensor


def make_graph(num_nodes: int = 12, extra_edges: int = 6, generator: torch.Generator | None = None) -> Tensor:
    """A connected undirected graph: a ring of ``num_nodes`` nodes plus ``extra_edges`` random chords."""
    adjacency = torch.zeros(num_nodes, num_nodes)
    ring = torch.arange(num_nodes)
    adjacency[ring, (ring + 1) % num_nodes] = 1
    pairs = torch.randint(num_nodes, (extra_edges, 2), generator=generator)
    adjacency[pairs[:, 0], pairs[:, 1]] = 1
    adjacency = ((adjacency + adjacency.T) > 0).float()
    adjacency.fill_diagonal_(0)
    return adjacency


def make_graph_dataset(num_samples: int = 1024, num_nodes: int = 12, features: int = 2, seed: int = 0) -> GraphDataset:
    """Synthetic node features with correlations along the edges and a nonlinear channel dependence.

    Generative process on a fixed graph (:func:`make_graph`): ``z ~ N(0, I)`` of shape
    ``[N, C]``; two diffusion steps ``h <- h + 0.9 A_norm h`` spread each node's noise
    to its neighbours; then each channel ``c > 0`` is shifted by a nonlinear function
    of the previous one, ``x_c = h_c + 0.8 (x_{c-1}^2 - 1)``, and ``x_0 = h_0``
    (a banana-shaped dependence that an affine coupling can model and a linear map cannot).
    """
    generator = torch.Generator().manual_seed(seed)
    adjacency = make_graph(num_nodes, generator=generator)
    a_norm = normalize_adjacency(adjacency)
    h = torch.randn(num_samples, num_nodes, features, generator=generator)
    for _ in range(2):
        h = h + 0.9 * torch.matmul(a_norm, h)  # [S, N, C]
    h = h / h.std()
    columns = [h[..., 0]]
    for c in range(1, features):
        columns.append(h[..., c] + 0.8 * (columns[-1] ** 2 - 1))
    return GraphDataset(torch.stack(columns, dim=-1), adjacency)  # [S, N, C]


class GraphActNorm(Flow):
    """Per-channel affine map on node features with data-dependent initialisation (Glow's actnorm on graphs).

    Formula: ``y[n, c] = (x[n, c] + bias[c]) * exp(logs[c])`` (the same for all nodes:
    permutation equivariant); on the first training batch ``bias``/``logs`` are set
    so that every channel has zero mean and unit variance. This is
    :class:`flowlib.layers.linear.ActNorm` applied to the channel-first view
    ``[B, C, N]`` of the node features, so it shares its saved ``initialized`` flag
    and its all-reduced initialisation under ``torch.distributed``.
    Inverse: ``x = y exp(-logs) - bias``. Log-determinant: ``N sum(logs)``. Cost ``O(B N C)``.
    Shapes: ``x, y: [B, N, C]``, ``logdet: [B]``.
    Reference: Kingma & Dhariwal, "Glow", NeurIPS 2018.
    """

    def __init__(self, shape):
        super().__init__(shape)
        nodes, channels = (int(s) for s in shape)
        self.actnorm = ActNorm((channels, nodes))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, logdet = self.actnorm(x.transpose(1, 2))  # [B, C, N]
        return y.transpose(1, 2), logdet

    def _inverse(self, y: Tensor) -> Tensor:
        return self.actnorm.inverse(y.transpose(1, 2)).transpose(1, 2)


class GraphCoupling(Flow):
    """Affine coupling on node features with a message-passing conditioner.

    Formula: channels split into ``a`` (kept) and ``b`` (transformed), interleaved: ``a`` holds the
    even channels ``0, 2, ...`` and ``b`` the odd ones (``swap=True``: the other way round). Unlike
    the halves of the image couplings, the two interleaved couplings of a block transform every
    channel given the channel before it, the dependence of :func:`make_graph_dataset`.
    The conditioner is a two-layer graph network
    ``h = tanh(x_a U0 + (A_norm x_a) U1 + c)``, ``[s, t] = h V0 + (A_norm h) V1 + d``;
    ``y_b = x_b * exp(tanh(s)) + t``, ``y_a = x_a``. ``V0, V1, d`` start at zero (identity).
    Inverse: ``x_b = (y_b - t) * exp(-tanh(s))``. Log-determinant:
    ``sum_{n, c in b} tanh(s[n, c])``. Permutation equivariant. Cost
    ``O(B (N^2 h + N C h))``. Shapes: ``x, y: [B, N, C]``, ``logdet: [B]``.
    Reference: Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP",
    ICLR 2017; Liu et al., "Graph Normalizing Flows", NeurIPS 2019.
    """

    def __init__(self, shape, adjacency: Tensor, swap: bool = False, hidden: int = 32):
        super().__init__(shape)
        C = int(shape[1])
        if C < 2:
            raise ValueError(f"GraphCoupling needs at least 2 features per node, got C = {C}")
        kept = torch.arange(C) % 2 == int(swap)
        self.register_buffer("kept", kept.nonzero().flatten())
        self.register_buffer("changed", (~kept).nonzero().flatten())
        self.register_buffer("adjacency", normalize_adjacency(adjacency))
        ca, cb = len(self.kept), len(self.changed)
        self.u0 = nn.Linear(ca, hidden)
        self.u1 = nn.Linear(ca, hidden, bias=False)
        self.v0 = nn.Linear(hidden, 2 * cb)
        self.v1 = nn.Linear(hidden, 2 * cb, bias=False)
        for layer in (self.v0, self.v1):
            nn.init.zeros_(layer.weight)
        nn.init.zeros_(self.v0.bias)

    def _scale_shift(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(self.u0(xa) + self.u1(torch.matmul(self.adjacency, xa)))  # [B, N, hidden]
        s, t = (self.v0(h) + self.v1(torch.matmul(self.adjacency, h))).chunk(2, dim=-1)  # [B, N, cb] each
        return torch.tanh(s), t

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xa, xb = x[..., self.kept], x[..., self.changed]
        log_scale, shift = self._scale_shift(xa)
        y = torch.empty_like(x)
        y[..., self.kept] = xa
        y[..., self.changed] = xb * torch.exp(log_scale) + shift
        return y, log_scale.flatten(1).sum(1)

    def _inverse(self, y: Tensor) -> Tensor:
        ya, yb = y[..., self.kept], y[..., self.changed]
        log_scale, shift = self._scale_shift(ya)
        x = torch.empty_like(y)
        x[..., self.kept] = ya
        x[..., self.changed] = (yb - shift) * torch.exp(-log_scale)
        return x


class GraphFlow(FlowDistribution):
    """Flow on node features ``[B, N, C]``: ``blocks`` x (actnorm, graph convexp?, coupling, coupling).

    ``log_prob(x) = log N(f(x); 0, I) + log |det df/dx|`` (:class:`~flowlib.core.FlowDistribution`);
    the two couplings of a block transform complementary channel sets. ``use_convexp=False`` drops the
    :class:`~flowlib.layers.convexp.GraphConvExp` layers (the ablation of Hoogeboom et
    al. 2020). ``sample(n)`` inverts the flow on Gaussian noise.
    """

    def __init__(self, adjacency: Tensor, features: int, blocks: int = 2, hidden: int = 32, use_convexp: bool = True):
        N = adjacency.shape[0]
        shape = (N, features)
        layers = []
        for _ in range(blocks):
            layers.append(GraphActNorm(shape))
            if use_convexp:
                layers.append(GraphConvExp(shape, adjacency=adjacency))
            layers += [GraphCoupling(shape, adjacency, swap=swap, hidden=hidden) for swap in (False, True)]
        super().__init__(Sequential(*layers))
        self.use_convexp = use_convexp


def fit(
    model: GraphFlow, data: Tensor, steps: int = 200, batch_size: int = 128, lr: float = 5e-3, seed: int = 0
) -> list[float]:
    """Train ``model`` by maximum likelihood with Adam; return the loss per step.

    The loss is the negative log-likelihood in nats per node feature
    (``-log_prob / (N C)``) of each random mini-batch of ``data [S, N, C]``.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    dims = data[0].numel()
    losses = []
    for _ in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=generator)]
        loss = -model.log_prob(batch).mean() / dims
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
