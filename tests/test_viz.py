"""The notebook widgets update their figure and readout when a slider moves (no browser needed)."""

import re

import numpy as np
import pytest
import scipy.linalg
import torch

from flowlib.functional import conv_exp, conv_matrix
from flowlib.viz import deformed_grid, eigen_widget, kernel_widget


def _sorted_complex(values):
    values = np.asarray(values)
    return values[np.lexsort((values.imag, values.real))]


def _plotted(trace):
    return _sorted_complex(np.asarray(trace.x) + 1j * np.asarray(trace.y))


def _trace(widget, name):
    (trace,) = [t for t in widget.figure.data if t.name == name]
    return trace


@pytest.mark.parametrize("n", [2, 3])
def test_eigen_widget_follows_its_sliders(n):
    w = eigen_widget(n)
    assert len(w.sliders) == n * n and all(s.description == name for name, s in w.sliders.items())
    assert all("flowlib-eigen-slider" in s._dom_classes for s in w.sliders.values())
    assert "flowlib-eigen-readout" in w.readout._dom_classes
    before_x, before_readout = np.array(_trace(w, "exp(A) grid").x), w.readout.value

    w.sliders["a11"].value = 1.25
    w.sliders[f"a{n}1"].value = -2.0
    A = w.matrix()
    assert A[0, 0] == 1.25 and A[n - 1, 0] == -2.0
    eig = np.linalg.eigvals(A)
    np.testing.assert_allclose(_plotted(_trace(w, "eig(A)")), _sorted_complex(eig), atol=1e-10)
    # the eigenvalues of exp(A) are computed from exp(A) itself and must equal exp(eig(A))
    np.testing.assert_allclose(_plotted(_trace(w, "eig(exp A)")), _sorted_complex(np.exp(eig)), atol=1e-8)
    after_x = np.array(_trace(w, "exp(A) grid").x)
    assert not np.allclose(np.nan_to_num(after_x), np.nan_to_num(before_x))
    gx, gy = deformed_grid(scipy.linalg.expm(A))
    np.testing.assert_allclose(after_x, gx, atol=1e-9)
    np.testing.assert_allclose(np.array(_trace(w, "exp(A) grid").y), gy, atol=1e-9)

    assert w.readout.value != before_readout
    det, exp_tr = (float(v) for v in re.findall(r"<b>([-0-9.e+]+)</b>", w.readout.value))
    assert det == pytest.approx(np.exp(np.trace(A)), rel=1e-5) and exp_tr == pytest.approx(det, rel=1e-5)


def test_deformed_grid_maps_the_square_linearly():
    M = np.array([[2.0, 1.0], [0.0, 0.5]])
    gx, gy = deformed_grid(M, lines=3, points=5)
    x0, y0 = deformed_grid(np.eye(2), lines=3, points=5)
    ok = ~np.isnan(x0)
    np.testing.assert_allclose(gx[ok], 2 * x0[ok] + y0[ok])
    np.testing.assert_allclose(gy[ok], 0.5 * y0[ok])
    assert np.isnan(gx).sum() == np.isnan(x0).sum() == 6  # one gap after each of the 6 lines


@pytest.mark.parametrize("channels", [1, 2])
def test_kernel_widget_follows_its_sliders(channels):
    size = 5
    w = kernel_widget(channels=channels, size=size)
    assert len(w.sliders) == 9 * channels**2
    assert all("flowlib-kernel-slider" in s._dom_classes for s in w.sliders.values())
    assert "flowlib-kernel-readout" in w.readout._dom_classes
    before_z, before_readout = np.array(_trace(w, "exp(M) impulse").z), w.readout.value

    centre = "k11" if channels == 1 else "k00_11"
    side = "k12" if channels == 1 else "k01_12"
    w.sliders[centre].value = 0.5
    w.sliders[side].value = -0.35
    k = w.kernel()
    assert float(k[0, 0, 1, 1]) == 0.5 and float(k[0, -1, 1, 2]) == -0.35

    M = conv_matrix(k, size, size).numpy()
    np.testing.assert_allclose(_plotted(_trace(w, "eig(M)")), _sorted_complex(np.linalg.eigvals(M)), atol=1e-8)
    z = np.array(_trace(w, "exp(M) impulse").z)  # [size, channels * size]: channels side by side
    assert not np.allclose(z, before_z)
    delta = np.zeros(channels * size * size)
    delta[size * size // 2] = 1.0  # channel 0, centre pixel
    expected = (scipy.linalg.expm(M) @ delta).reshape(channels, size, size)
    np.testing.assert_allclose(z, np.concatenate(list(expected), axis=1), atol=1e-7)

    assert w.readout.value != before_readout
    terms = int(re.search(r"terms for tol [^:]+: <b>(\d+)</b>", w.readout.value).group(1))
    response = conv_exp(torch.from_numpy(delta.reshape(1, channels, size, size)), k, terms=terms).numpy()
    np.testing.assert_allclose(response.reshape(-1), expected.reshape(-1), atol=1e-7)
    logdet = float(re.search(r"tr\(centre\) = <b>([-0-9.]+)</b>", w.readout.value).group(1))
    assert logdet == pytest.approx(size * size * float(torch.diagonal(k[:, :, 1, 1]).sum()), abs=1e-3)
    assert logdet == pytest.approx(np.linalg.slogdet(scipy.linalg.expm(M))[1], abs=1e-3)


def test_widgets_reject_bad_arguments():
    with pytest.raises(ValueError, match="2x2 and 3x3"):
        eigen_widget(4)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        eigen_widget(2, A=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="1 or 2 channels"):
        kernel_widget(channels=3)


@pytest.mark.parametrize("make", [lambda: eigen_widget(3), lambda: kernel_widget(channels=2, size=5)])
def test_static_fallback_draws_the_current_figure(make):
    w = make()
    fig = w.static_figure()
    plotted = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in plotted] == [a.text for a in w.figure.layout.annotations]
    scatter = [t for t in w.figure.data if t.type == "scatter"]
    lines = [line for ax in plotted for line in ax.lines]
    assert [line.get_label() for line in lines] == [t.name for t in scatter]
    for line, trace in zip(lines, scatter, strict=True):  # same data, NaN gaps included
        np.testing.assert_array_equal(line.get_xdata(), np.asarray(trace.x, dtype=float))
        np.testing.assert_array_equal(line.get_ydata(), np.asarray(trace.y, dtype=float))
    for trace in (t for t in w.figure.data if t.type == "heatmap"):
        (image,) = plotted[1].images
        np.testing.assert_array_equal(image.get_array(), np.asarray(trace.z, dtype=float))
    assert "tr" in fig._suptitle.get_text() and "<" not in fig._suptitle.get_text()  # the readout, tags removed
    png = w.static()
    assert png.data[:8] == b"\x89PNG\r\n\x1a\n" and len(png.data) > 10_000
    w.sliders[next(iter(w.sliders))].value = 0.7  # a static picture is a snapshot: it does not follow the sliders
    assert png.data != w.static().data
