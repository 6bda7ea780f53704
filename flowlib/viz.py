"""Interactive views for the notebooks: ipywidgets sliders driving plotly ``FigureWidget``s.

* :func:`eigen_widget` (notebook 01): edit a 2x2 or 3x3 matrix ``A``; see the
  eigenvalues of ``A`` and of ``exp(A)`` in the complex plane and a grid deformed
  by ``exp(A)``; the readout shows ``det exp(A) = exp(tr A)``.
* :func:`kernel_widget` (notebook 02): edit a 3x3 convolution kernel; see the
  spectrum of its convolution matrix ``M`` on a small image, the impulse response
  of ``exp(M)`` (the effective kernel of the convolution exponential), and a
  readout with the number of series terms and ``log det exp(M) = H W tr(centre)``.

Both return an object with ``.sliders`` (a dict name -> slider), ``.figure`` (the
``FigureWidget``), ``.readout`` (an ``ipywidgets.HTML``) and ``.widget`` (the whole
layout; the object itself displays as that layout). Moving a slider, by hand or
by assigning ``w.sliders[name].value``, recomputes and updates the figure in
place. CSS classes (``flowlib-eigen-slider``, ``flowlib-eigen-readout``,
``flowlib-eigen-figure`` and the ``kernel`` counterparts) let browser tests find them.

Static fallback: a notebook rendered without a kernel (nbconvert, GitHub) shows no
widget, so ``w.static()`` returns a PNG picture (``IPython.display.Image``) of the
widget's current figure drawn with matplotlib (no kaleido needed), plus its readout
as the title; call it right after building the widget to keep its initial state::

    w = kernel_widget()
    display(w, w.static())
"""

from __future__ import annotations

import html
import io
import re

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from .functional import conv_exp, conv_exp_logdet, conv_exp_terms, conv_matrix, conv_spectral_norm_bound
from .linalg import expm

__all__ = ["EigenWidget", "KernelWidget", "eigen_widget", "kernel_widget", "deformed_grid"]


def _slider(description: str, value: float, low: float, high: float, step: float, css: str) -> ipw.FloatSlider:
    slider = ipw.FloatSlider(
        value=value,
        min=low,
        max=high,
        step=step,
        description=description,
        continuous_update=True,
        readout_format=".2f",
        layout=ipw.Layout(width="260px"),
    )
    slider.add_class(css)
    return slider


def _unit_circle(points: int = 181) -> go.Scatter:
    """A dotted unit circle: the reference for eigenvalues in the complex plane."""
    t = np.linspace(0, 2 * np.pi, points)
    return go.Scatter(
        x=np.cos(t), y=np.sin(t), mode="lines", name="unit circle", line=dict(color="lightgray", dash="dot")
    )


def deformed_grid(matrix: np.ndarray, lines: int = 9, points: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Image of the grid lines of ``[-1, 1]^2`` under ``x -> matrix[:2, :2] x``.

    Returns ``(xs, ys)``: the coordinates of all lines in one array each, separated
    by NaN (plotly draws NaN as a gap), so that one trace holds the whole grid.
    """
    t = np.linspace(-1, 1, points)
    ends = np.linspace(-1, 1, lines)
    segments = []
    for c in ends:
        segments.append(np.stack([t, np.full_like(t, c)]))  # horizontal line, [2, points]
        segments.append(np.stack([np.full_like(t, c), t]))  # vertical line, [2, points]
    gap = np.full((2, 1), np.nan)
    grid = np.concatenate([np.concatenate([s, gap], axis=1) for s in segments], axis=1)  # [2, L]
    image = matrix[:2, :2] @ np.nan_to_num(grid)
    image[:, np.isnan(grid[0])] = np.nan
    return image[0], image[1]


class _SliderWidget:
    """Shared plumbing: sliders -> ``update()``; displays as ``self.widget``."""

    sliders: dict[str, ipw.FloatSlider]
    figure: go.FigureWidget
    readout: ipw.HTML
    widget: ipw.Widget

    def _connect(self) -> None:
        for slider in self.sliders.values():
            slider.observe(lambda change: self.update(), names="value")

    def update(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def static_figure(self) -> Figure:
        """The plotly figure's current traces redrawn with matplotlib (one axis per subplot).

        Scatter traces become markers or lines (NaN gaps kept), heatmaps an ``imshow``
        with a centred ``RdBu`` colour map; subplot titles, axis titles and the readout
        (as the figure title, HTML tags removed) are copied.
        """
        layout = self.figure.layout
        titles = [a.text for a in layout.annotations]
        fig = Figure(figsize=(10, 4.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(titles) or 1, squeeze=False)[0]
        for ax, title in zip(axes, titles, strict=False):
            ax.set_title(title, fontsize=10)
        for trace in self.figure.data:
            ax = axes[int(trace.xaxis[1:] or 1) - 1]
            if trace.type == "heatmap":
                z = np.asarray(trace.z, dtype=float)
                limit = max(float(np.abs(z).max()), 1e-12)
                image = ax.imshow(z, cmap="RdBu", vmin=-limit, vmax=limit)
                fig.colorbar(image, ax=ax, shrink=0.8)
                continue
            x, y = np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float)
            color = trace.marker.color if "markers" in trace.mode else trace.line.color
            if "markers" in trace.mode:
                marker = "D" if trace.marker.symbol == "diamond" else "o"
                ax.plot(x, y, linestyle="none", marker=marker, color=color, label=trace.name)
            else:
                ax.plot(x, y, color=color, linestyle=":" if trace.line.dash == "dot" else "-", label=trace.name)
        for k, ax in enumerate(axes, start=1):
            suffix = "" if k == 1 else str(k)
            xaxis, yaxis = layout[f"xaxis{suffix}"], layout[f"yaxis{suffix}"]
            ax.set_xlabel(xaxis.title.text or "")
            ax.set_ylabel(yaxis.title.text or "")
            if yaxis.scaleanchor and not ax.images:
                ax.set_aspect("equal", adjustable="datalim")
            if ax.lines:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(html.unescape(re.sub(r"<[^>]+>", "", self.readout.value)).replace("\xa0", " "), fontsize=9)
        fig.tight_layout()
        return fig

    def static(self) -> Image:
        """A PNG of :meth:`static_figure`: what a rendered notebook shows in place of the live widget."""
        buffer = io.BytesIO()
        self.static_figure().savefig(buffer, format="png", dpi=80)
        return Image(data=buffer.getvalue(), format="png")


class EigenWidget(_SliderWidget):
    """Sliders for the entries of an ``n x n`` matrix ``A`` (``n`` = 2 or 3).

    Left panel: eigenvalues of ``A`` (trace ``eig(A)``) and of ``exp(A)`` (trace
    ``eig(exp A)``, computed from the matrix ``exp(A)`` itself, so the picture
    *shows* that they are ``exp`` of the former) with the unit circle. Right panel:
    the grid of ``[-1, 1]^2`` and its image under ``exp(A)`` (for ``n = 3``, the
    top-left 2x2 block acting on the plane ``z = 0``, projected back on it).
    """

    def __init__(self, n: int = 2, A=None):
        if n not in (2, 3):
            raise ValueError(f"eigen_widget supports 2x2 and 3x3 matrices, got n={n}")
        start = (
            np.array([[0.3, -1.0], [1.0, 0.1]])
            if n == 2
            else np.array([[0.2, -1.0, 0.0], [1.0, 0.1, 0.3], [0.0, -0.3, -0.4]])
        )
        if A is not None:
            start = np.asarray(A, dtype=float)
            if start.shape != (n, n):
                raise ValueError(f"eigen_widget(n={n}) needs A of shape ({n}, {n}), got {start.shape}")
        self.n = n
        self.sliders = {
            f"a{i + 1}{j + 1}": _slider(f"a{i + 1}{j + 1}", float(start[i, j]), -3.0, 3.0, 0.05, "flowlib-eigen-slider")
            for i in range(n)
            for j in range(n)
        }
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=("eigenvalues in the complex plane", "grid of [-1, 1]² mapped by exp(A)")
        )
        fig.add_trace(_unit_circle(), row=1, col=1)
        fig.add_trace(
            go.Scatter(x=[], y=[], mode="markers", name="eig(A)", marker=dict(size=11, color="#1f77b4")), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(
                x=[], y=[], mode="markers", name="eig(exp A)", marker=dict(size=11, symbol="diamond", color="#d62728")
            ),
            row=1,
            col=1,
        )
        gx, gy = deformed_grid(np.eye(2))
        fig.add_trace(
            go.Scatter(x=gx, y=gy, mode="lines", name="grid", line=dict(color="lightgray", width=1)), row=1, col=2
        )
        fig.add_trace(
            go.Scatter(x=[], y=[], mode="lines", name="exp(A) grid", line=dict(color="#2ca02c", width=1.5)),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="Re", row=1, col=1)
        fig.update_yaxes(title_text="Im", scaleanchor="x", row=1, col=1)
        fig.update_yaxes(scaleanchor="x2", row=1, col=2)
        fig.update_layout(height=420, width=900, margin=dict(l=40, r=20, t=40, b=40))
        self.figure = go.FigureWidget(fig)
        self.figure.add_class("flowlib-eigen-figure")
        self.readout = ipw.HTML()
        self.readout.add_class("flowlib-eigen-readout")
        rows = [ipw.HBox([self.sliders[f"a{i + 1}{j + 1}"] for j in range(n)]) for i in range(n)]
        self.widget = ipw.VBox([*rows, self.readout, self.figure])
        self._connect()
        self.update()

    def matrix(self) -> np.ndarray:
        """The current ``A`` (``n x n`` float64 array) read from the sliders."""
        return np.array([[self.sliders[f"a{i + 1}{j + 1}"].value for j in range(self.n)] for i in range(self.n)])

    def update(self) -> None:
        """Recompute ``exp(A)``, its eigenvalues and the grid; update figure and readout."""
        A = self.matrix()
        E = expm(torch.from_numpy(A)).numpy()
        eig_a = np.linalg.eigvals(A)
        eig_e = np.linalg.eigvals(E)
        gx, gy = deformed_grid(E)
        with self.figure.batch_update():
            self.figure.data[1].x, self.figure.data[1].y = eig_a.real, eig_a.imag
            self.figure.data[2].x, self.figure.data[2].y = eig_e.real, eig_e.imag
            self.figure.data[4].x, self.figure.data[4].y = gx, gy
        tr = float(np.trace(A))
        det = float(np.linalg.det(E))
        self.readout.value = (
            f"tr A = {tr:.4f} &nbsp;|&nbsp; det exp(A) = <b>{det:.6g}</b> &nbsp;|&nbsp; "
            f"exp(tr A) = <b>{np.exp(tr):.6g}</b> &nbsp;|&nbsp; "
            f"eigenvalues of A: {html.escape(_fmt_complex(eig_a))}"
        )


class KernelWidget(_SliderWidget):
    """Sliders for a 3x3 kernel (``channels`` = 1 or 2) acting on a ``size x size`` image.

    Left panel: the eigenvalues of the ``(C size^2) x (C size^2)`` convolution matrix
    ``M`` (:func:`flowlib.functional.conv_matrix`), trace ``eig(M)``. Right panel:
    ``exp(M) delta`` for a delta image at the centre of channel 0, i.e. the effective
    kernel of the convolution exponential (trace ``exp(M) impulse``; channels side
    by side). Readout: the kernel's guaranteed norm bound
    (:func:`flowlib.functional.conv_spectral_norm_bound`, what the layer uses), the
    series terms :func:`conv_exp_terms` needs for it, and ``log det exp(M)`` as
    ``H W tr(centre)`` and from the dense matrix.
    """

    def __init__(self, channels: int = 1, size: int = 7, kernel=None, tol: float = 1e-8):
        if channels not in (1, 2):
            raise ValueError(f"kernel_widget supports 1 or 2 channels, got {channels}")
        if size < 3:
            raise ValueError(f"kernel_widget needs an image of at least 3x3 pixels, got size={size}")
        self.channels, self.size, self.tol = channels, size, tol
        start = np.zeros((channels, channels, 3, 3))
        if kernel is not None:
            start = np.asarray(kernel, dtype=float)
            if start.shape != (channels, channels, 3, 3):
                raise ValueError(f"kernel must have shape ({channels}, {channels}, 3, 3), got {start.shape}")
        else:
            start[:, :, 1, 1] = 0.2 * np.eye(channels)
            start[0, 0, 1, 2] = 0.4
            start[0, 0, 0, 1] = -0.3
        self._keys = [
            (o, i, r, c) for o in range(channels) for i in range(channels) for r in range(3) for c in range(3)
        ]
        self.sliders = {
            self._name(*key): _slider(self._name(*key), float(start[key]), -1.0, 1.0, 0.05, "flowlib-kernel-slider")
            for key in self._keys
        }
        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=("eigenvalues of the convolution matrix M", "exp(M) applied to a centred impulse"),
        )
        fig.add_trace(_unit_circle(), row=1, col=1)
        fig.add_trace(
            go.Scatter(x=[], y=[], mode="markers", name="eig(M)", marker=dict(size=8, color="#1f77b4")), row=1, col=1
        )
        fig.add_trace(
            go.Heatmap(
                z=np.zeros((size, channels * size)),
                colorscale="RdBu",
                zmid=0,
                name="exp(M) impulse",
                colorbar=dict(x=1.02),
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="Re", row=1, col=1)
        fig.update_yaxes(title_text="Im", scaleanchor="x", row=1, col=1)
        fig.update_yaxes(autorange="reversed", scaleanchor="x2", row=1, col=2)
        fig.update_layout(
            height=460,
            width=900,
            margin=dict(l=40, r=20, t=40, b=80),
            legend=dict(orientation="h", x=0, y=-0.22),  # below the plots, clear of the colorbar
        )
        self.figure = go.FigureWidget(fig)
        self.figure.add_class("flowlib-kernel-figure")
        self.readout = ipw.HTML()
        self.readout.add_class("flowlib-kernel-readout")
        grids = []
        for o in range(channels):
            for i in range(channels):
                rows = [ipw.HBox([self.sliders[self._name(o, i, r, c)] for c in range(3)]) for r in range(3)]
                title = ipw.HTML(f"<b>kernel[{o}, {i}]</b>" if channels > 1 else "<b>3x3 kernel</b>")
                grids.append(ipw.VBox([title, *rows]))
        self.widget = ipw.VBox([ipw.HBox(grids), self.readout, self.figure])
        self._connect()
        self.update()

    def _name(self, o: int, i: int, r: int, c: int) -> str:
        return f"k{r}{c}" if self.channels == 1 else f"k{o}{i}_{r}{c}"

    def kernel(self) -> torch.Tensor:
        """The current kernel, a float64 tensor of shape ``[C, C, 3, 3]``."""
        k = torch.zeros(self.channels, self.channels, 3, 3, dtype=torch.float64)
        for key in self._keys:
            k[key] = self.sliders[self._name(*key)].value
        return k

    def update(self) -> None:
        """Recompute the spectrum of ``M`` and ``exp(M) delta``; update figure and readout."""
        k = self.kernel()
        C, S = self.channels, self.size
        M = conv_matrix(k, S, S)  # [C*S*S, C*S*S]
        eig = np.linalg.eigvals(M.numpy())
        norm = float(conv_spectral_norm_bound(k, S, S))
        terms = conv_exp_terms(norm, self.tol, max_terms=200)
        delta = torch.zeros(1, C, S, S, dtype=torch.float64)
        delta[0, 0, S // 2, S // 2] = 1.0
        response = conv_exp(delta, k, terms=terms)[0]  # [C, S, S]
        side_by_side = response.permute(1, 0, 2).reshape(S, C * S).numpy()  # [S, C*S]
        logdet_trace = float(conv_exp_logdet(k, S, S))
        logdet_dense = float(torch.linalg.slogdet(expm(M)).logabsdet)
        with self.figure.batch_update():
            self.figure.data[1].x, self.figure.data[1].y = eig.real, eig.imag
            self.figure.data[2].z = side_by_side
        self.readout.value = (
            f"norm bound ||M|| &le; {norm:.3f} &nbsp;|&nbsp; series terms for tol {self.tol:g}: <b>{terms}</b>"
            f" &nbsp;|&nbsp; log det exp(M) = H&middot;W&middot;tr(centre) = <b>{logdet_trace:.4f}</b>"
            f" &nbsp;|&nbsp; dense slogdet: {logdet_dense:.4f}"
        )


def _fmt_complex(values: np.ndarray) -> str:
    return ", ".join(f"{v.real:.3f}{v.imag:+.3f}i" for v in values)


def eigen_widget(n: int = 2, A=None) -> EigenWidget:
    """Build the eigenvalue widget of notebook 01 (see :class:`EigenWidget`); display it as the cell result."""
    return EigenWidget(n=n, A=A)


def kernel_widget(channels: int = 1, size: int = 7, kernel=None) -> KernelWidget:
    """Build the convolution-kernel widget of notebook 02 (see :class:`KernelWidget`)."""
    return KernelWidget(channels=channels, size=size, kernel=kernel)
