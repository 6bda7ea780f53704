"""Reference solutions of the lessons in ``lessons/``: the one place where the answers are kept.

* Every *implement* exercise has a function here with the same name and signature as its skeleton in
  ``lessons/NN_topic_exercises.ipynb``. ``lessons/make_solutions.py`` copies the source of that function
  (preceded by the helpers listed in :data:`HELPERS`) into the lecturer's notebook
  ``lessons/solutions/NN_topic_solutions.ipynb`` in place of the skeleton.
* :data:`ANSWERS` holds, per lesson and exercise number, the answer cells (markdown, and code that backs
  a claim with an ``assert``) that ``make_solutions.py`` appends at the end of that exercise.
* ``tests/test_checks.py`` and ``tests/test_checks_late.py`` test the checkers of ``flowlib.checks`` with
  these same functions, and ``tests/test_lessons_solutions.py`` runs the generated notebooks.

A solution function may only use names that its lesson's import cell defines (``math``, ``torch``, ``F``,
``expm``, ...) and functions defined earlier in the same lesson; the imports below mirror them.
"""

import math

import torch
import torch.nn.functional as F

from flowlib.linalg import expm


# ---- lesson 01: the matrix exponential ---------------------------------------------------------------
def expm_series(A, terms):
    # A^k / k! = (A^(k-1) / (k-1)!) @ A / k: each term from the previous one, so no factorial is ever
    # formed (an int math.factorial(k) overflows a tensor operation from k = 21 on)
    term = torch.eye(A.shape[-1], dtype=A.dtype)
    total = term
    for k in range(1, terms + 1):
        term = term @ A / k
        total = total + term
    return total


def expm_inverse(A):
    # A and -A commute, so exp(A) exp(-A) = exp(A - A) = exp(0) = I
    return expm(-A)


def expm_logdet(A):
    # the eigenvalues of exp(A) are exp(lambda_i): det exp(A) = exp(sum lambda_i) = exp(tr A) > 0
    return torch.trace(A)


def conv1x1_exp_logdet(A, H, W):
    # the Jacobian is block diagonal: one block exp(A) per pixel, H * W blocks
    return H * W * torch.trace(A)


def scaling_and_squaring(A, s, terms):
    # exp(A) = exp(A / 2^s)^(2^s): the series on the small matrix, then s squarings
    B = expm_series(A / 2**s, terms)
    for _ in range(s):
        B = B @ B
    return B


# ---- lesson 02: the convolution exponential ----------------------------------------------------------
def conv_matrix(kernel, H, W):
    C = kernel.shape[0]
    n = C * H * W
    basis = torch.eye(n, dtype=kernel.dtype).reshape(n, C, H, W)  # image j is the basis vector e_j
    images = F.conv2d(basis, kernel, padding=1).reshape(n, n)  # row j is M e_j ...
    return images.T  # ... which is column j of M


def conv_exp_series(x, kernel, terms):
    # term_k = M term_(k-1) / k = M^k x / k!: one convolution per term, M never built
    term = total = x
    for k in range(1, terms + 1):
        term = F.conv2d(term, kernel, padding=kernel.shape[-1] // 2) / k
        total = total + term
    return total


def inv_conv_exp(y, kernel, terms):
    # exp(M)^-1 = exp(-M), and -M is the convolution with -kernel
    return conv_exp_series(y, -kernel, terms)


def conv_exp_logdet(kernel, H, W):
    # log|det exp(M)| = tr M; only the centre tap's channel diagonal maps (p, c) to (p, c), once per pixel
    centre = kernel.shape[-1] // 2
    return H * W * torch.diagonal(kernel[:, :, centre, centre]).sum()


# ---- lesson 03: invertible convolutions --------------------------------------------------------------
def conv1x1_logdet(W, H, Wd):
    # H * Wd copies of W on the diagonal; slogdet gives log|det W| also when det W < 0
    return H * Wd * torch.linalg.slogdet(W).logabsdet


def centred_spectrum(kernel, H, W):
    # fft2 of the kernel on the H x W grid with its centre tap rolled to index (0, 0)
    k = kernel.shape[0]
    padded = torch.zeros(H, W, dtype=kernel.dtype)
    padded[:k, :k] = kernel
    return torch.fft.fft2(torch.roll(padded, (-(k // 2), -(k // 2)), (0, 1)))


def periodic_inverse(y, kernel):
    # y_hat = K x_hat with K the conjugate spectrum (a cross-correlation): divide, frequency by frequency
    K = centred_spectrum(kernel, y.shape[-2], y.shape[-1]).conj()
    return torch.fft.ifft2(torch.fft.fft2(y) / K).real


def periodic_logdet(kernel, H, W):
    # the DFT diagonalises the map: log|det| = sum over all H * W frequencies of log|K(u, v)|
    return torch.log(centred_spectrum(kernel, H, W).abs()).sum()


# ---- lesson 04: Sylvester and residual flows ---------------------------------------------------------
def sylvester_logdet(R, Rt, pre):
    # det(I + Q R H R~ Q^T) = det(I + H R~ R) with H = diag(tanh'(pre)); R~ R is triangular with
    # diagonal R_ii R~_ii, so the determinant is a product over the diagonal
    diagonal = torch.diagonal(R) * torch.diagonal(Rt)  # [M]
    derivative = 1 - torch.tanh(pre) ** 2  # [B, M]
    return torch.log(torch.abs(1 + diagonal * derivative)).sum(-1)


def planar_inverse(y, u_hat, w, b):
    # a = w^T x + b solves a + c tanh(a) = w^T y + b with c = w^T u_hat > -1: an increasing function whose
    # root lies within |c| of w^T y + b; flowlib's safeguarded Newton solves it, then x = y - u_hat tanh(a)
    from flowlib.toy.sylvester import solve_monotone

    c = w @ u_hat
    target = y @ w + b

    def g(a):
        return a + c * torch.tanh(a), 1 + c * (1 - torch.tanh(a) ** 2)

    a, _ = solve_monotone(g, target, target - c.abs(), target + c.abs())
    return y - torch.tanh(a)[:, None] * u_hat


def series_logdet(J, n_terms):
    power = torch.eye(J.shape[0], dtype=J.dtype)
    total = torch.zeros((), dtype=J.dtype)
    for k in range(1, n_terms + 1):
        power = power @ J  # J^k from J^(k-1): one matrix product per term
        total = total + (-1) ** (k + 1) * torch.trace(power) / k
    return total


# ---- lesson 05: bits per dimension -------------------------------------------------------------------
def bits_per_dim(log_p, dims):
    # nats -> bits: divide by ln 2; per dimension: divide by D; a cost: negate the log-likelihood
    return -log_p / (dims * math.log(2))


def bpd_from_density(log_density, dims):
    # v = (x + u) / 256 has Jacobian 256^-D, so log p(x + u) = log p(v) - D log 256 (a bound on log P(x))
    return bits_per_dim(log_density - dims * math.log(256), dims)


def histogram_bpd(images, probs):
    # each pixel value costs -log2 p(value) bits; the mean over all values is bits per dimension
    return -torch.log2(probs[images.long()]).mean()


HELPERS = {"periodic_inverse": ["centred_spectrum"]}
"""Functions whose source goes into the same notebook cell, before the solution of the named exercise."""


# ---- answers to the think questions and experiments ---------------------------------------------------
def md(text: str) -> tuple[str, str]:
    """A markdown answer cell."""
    return "markdown", text.strip()


def code(text: str) -> tuple[str, str]:
    """A code answer cell (it backs a claim of the answer with an executed assert)."""
    return "code", text.strip()


ANSWERS = {
    "01_matrix_exponential": {
        1: [
            md(r"""
**Answer.** $A$ is strictly upper triangular, so $A^2$ has a single non-zero entry ($ac$, top right) and
$A^3 = 0$: the series stops by itself, $\exp(A) = I + A + A^2/2$ exactly (three non-zero terms, whatever the
values of $a, b, c$). $\exp(A)$ is upper triangular with ones on the diagonal, so all its eigenvalues are 1 and
$\det\exp(A) = 1 = e^{\operatorname{tr}A} = e^0$.
"""),
            code(r"""
A = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]], dtype=f64)
three_terms = torch.eye(3, dtype=f64) + A + A @ A / 2
err = (expm(A) - three_terms).abs().max().item()
det = torch.linalg.det(expm(A)).item()
print(f"A^3 = 0: {bool((A @ A @ A == 0).all())}; |expm(A) - (I + A + A^2/2)| = {err:.1e}; det = {det:.6f}")
assert bool((A @ A @ A == 0).all()) and err < 1e-14 and abs(det - 1) < 1e-12
"""),
        ],
        3: [
            md(r"""
**Answer (think).** $\exp(A)^\top = \exp(A^\top)$ is the inverse $\exp(-A)$ when $A^\top = -A$ (skew-symmetric
$A$): then $\exp(A)$ is orthogonal, a rotation with determinant $e^{\operatorname{tr}A} = 1$. More generally it
holds exactly when $\exp(A)$ is orthogonal; for a general $A$ the transpose is not the inverse (that is one of the
mistakes the checker names).
"""),
        ],
        7: [
            md(r"""
**Answer.** The number of terms grows with $\lVert A\rVert_1$: the $k$-th term $\lVert A\rVert^k/k!$ first grows
until $k \approx \lVert A\rVert$ and only then decays. The bound always asks for at least as many terms as are
needed, because `taylor_remainder_bound` is an upper bound of the truncation error (it is pessimistic: it assumes
the worst matrix of that norm). With scaling and squaring, the 6-term series on $B = A/2^s$ errs by about
$\lVert B\rVert^7/7!$ and the $s$ squarings multiply that relative error by about $2^s$, so each extra squaring
gains a factor of about $2^6 = 64$ until rounding takes over. The cell below checks the term counts, measures the
smallest $s$ for float32 accuracy on the matrix above and checks the factor 64.
"""),
            code(r"""
needed, bounds = [], []
for norm in experiment_norms:
    A = norm * B
    exact = torch.from_numpy(scipy.linalg.expm(A.numpy()))
    scale = torch.linalg.matrix_norm(exact, ord=1).item()
    errors = [torch.linalg.matrix_norm(exact - expm_series(A, m), ord=1).item() / scale for m in range(60)]
    needed.append(next(m for m, e in enumerate(errors) if e <= 1e-12))
    bounds.append(next(m for m in range(200) if taylor_remainder_bound(norm, m) <= 1e-12 * scale))
print(f"terms needed {needed}, asked for by the bound {bounds}")
assert needed == sorted(needed) and all(n <= b for n, b in zip(needed, bounds))

A = 10 * B  # ||A||_1 = 10
exact = torch.from_numpy(scipy.linalg.expm(A.numpy()))
scale = torch.linalg.matrix_norm(exact, ord=1).item()
errors = [torch.linalg.matrix_norm(scaling_and_squaring(A, s, 6) - exact, ord=1).item() / scale for s in range(10)]
smallest = next(s for s, e in enumerate(errors) if e <= 1e-7)
ratios = [errors[s] / errors[s + 1] for s in range(2, 6)]
print(f"smallest s for 1e-7 with 6 terms: {smallest} (error {errors[smallest]:.1e})")
print(f"error ratio per extra squaring (s = 2..5): {[round(r) for r in ratios]}")
assert 2 <= smallest <= 6 and errors[smallest - 1] > 1e-7
assert all(30 < r < 130 for r in ratios)  # about 2^6 = 64
"""),
        ],
        8: [
            md(r"""
**Answer.** No. Every `conv1x1_exp` layer has $\det\exp(A) = e^{\operatorname{tr}A} > 0$, and a composition of
maps with positive Jacobian determinant has a positive one too, so such a flow preserves orientation everywhere;
the reflection has determinant $-1$. (Nor can training get there gradually: the determinant would have to cross
0.) A cheap fix is a fixed layer with determinant $-1$, e.g. flipping the sign of one channel (or a fixed
permutation of odd parity): it costs nothing and adds $\log\lvert\det\rvert = 0$.
"""),
        ],
    },
    "02_convolution_exponential": {
        2: [
            md(r"""
**Answer (think).** Computed from `x`, every term is $Mx/k$: the sum is $x + (\sum_k 1/k)\,Mx$, a single
convolution with a rescaled kernel and not the exponential (the receptive field stays $3\times3$ instead of
growing by 2 pixels per term). Getting $M^kx$ from `x` would need $k$ convolutions for term $k$, $O(m^2)$ in
all; the running term gets it with one convolution per term.
"""),
        ],
        3: [
            md(r"""
**Answer (think).** The transposed convolution is the matrix $M^\top$, and $\exp(M^\top) = \exp(M)^\top$. That is
the inverse $\exp(-M)$ only if $M^\top = -M$ (a skew-symmetric kernel,
`kernel == -kernel.transpose(0, 1).flip(-2, -1)`); for a general kernel $\exp(M)^\top\exp(M) \ne I$. The inverse
negates the kernel: $\exp(M)^{-1} = \exp(-M)$, at the cost of the forward pass.
"""),
        ],
        4: [
            md(r"""
**Answer.** The diagonal entry of $M$ for pixel $p$, channel $c$ is the weight from $(p, c)$ to $(p, c)$: the centre
tap's channel diagonal `kernel[c, c, 1, 1]`. The centre tap never falls outside the image, so it appears at every
one of the $HW$ pixels: $\operatorname{tr}M = HW\sum_c$ `kernel[c, c, 1, 1]`, $O(C)$ work.
"""),
        ],
        5: [
            md(r"""
**Answer.** The log-determinant is unchanged: with periodic padding the diagonal of $M$ still holds the centre tap's
channel diagonal at every pixel (for $H, W \ge 3$ no other tap wraps onto the pixel itself), so
$\log\lvert\det\exp(M)\rvert = \operatorname{tr}M = HW\operatorname{tr}(\text{centre})$. And the layer is then
exactly equivariant to cyclic translations: a periodic convolution commutes with cyclic shifts, hence so do all
powers of $M$ and their series $\exp(M)$. With zero padding the borders break that. The cell below checks both.
"""),
            code(r"""
E = torch.from_numpy(scipy.linalg.expm(M_periodic.numpy()))
x = torch.randn(1, 2, image_size, image_size, dtype=f64, generator=gen)


def shift(t):
    return torch.roll(t, (1, 2), (-2, -1))  # a cyclic translation


def periodic_exp(t):
    return (E @ t.reshape(-1)).reshape(t.shape)


logdet_gap = abs(logdet - Fn.conv_exp_logdet(kernel, image_size, image_size).item())
periodic_err = (periodic_exp(shift(x)) - shift(periodic_exp(x))).abs().max().item()
zero_padded_err = (Fn.conv_exp(shift(x), kernel) - shift(Fn.conv_exp(x, kernel))).abs().max().item()
print(f"log-det gap {logdet_gap:.1e}; shift error: periodic {periodic_err:.1e}, zero padding {zero_padded_err:.1e}")
assert logdet_gap < 1e-8 and periodic_err < 1e-10 and zero_padded_err > 1e-3
"""),
        ],
        6: [
            md(r"""
**Answer.** With only the tap `kernel[0, 0, 1, 2] = a`, $(Mx)[h, w] = a\,x[h, w+1]$: $M$ moves the image one pixel
to the left and multiplies it by $a$. So $M^k\delta$ is $a^k$ at $k$ pixels left of the delta, and
$\exp(M)\delta$ reads $1, a, a^2/2, a^3/6$ from the delta leftwards, zero elsewhere: the effective kernel is a
one-sided line. The zero padding drops what moves out of the image, which is why $M$ is nilpotent on that row
($M^7 = 0$ on a width of 7). Doubling $a$ turns the values into $(2a)^k/k!$: $1, 2, 2, 4/3$ for $a = 1$, so the
response reaches further (relatively) rather than just doubling.
"""),
            code(r"""
for a in [1.0, 2.0]:
    single = torch.zeros(1, 1, 3, 3, dtype=f64)
    single[0, 0, 1, 2] = a
    row = Fn.conv_exp(delta, single)[0, 0, 3]
    predicted = torch.tensor([a**3 / 6, a**2 / 2, a, 1, 0, 0, 0], dtype=f64)
    print(f"a = {a}: response {row.numpy().round(4)}; predicted a^k / k! to the left")
    assert (row - predicted).abs().max().item() < 1e-12
"""),
        ],
    },
    "03_invertible_convolutions": {
        1: [
            md(r"""
**Answer.** Only entries at the same pixel interact: output $(c, h, w)$ depends on the $C$ inputs
$(\cdot, h, w)$ and nothing else, so the receptive field is a single pixel. Ordered pixel by pixel, the Jacobian
is block diagonal with $HW$ copies of $W$, so $\det J = (\det W)^{HW}$ and $\log\lvert\det J\rvert =
HW\log\lvert\det W\rvert$: a $C\times C$ determinant instead of a $CHW\times CHW$ one.
"""),
        ],
        4: [
            md(r"""
**Answer (think).** For a real kernel $\hat K(-u, -v) = \overline{\hat K(u, v)}$, so `torch.fft.rfft2` stores only
the $W/\!/2 + 1$ non-redundant columns. The determinant is the product over all $HW$ frequencies; summing
$\log\lvert\hat K\rvert$ over the rfft2 half leaves out the mirrored frequencies (each missing one equals a stored
one in modulus, so one could double the columns that have a mirror partner, but `fft2` is simpler).
"""),
        ],
        5: [
            md(r"""
**Answer.** As the smallest $\lvert\hat K(u, v)\rvert$ approaches 0, its logarithm sends $\log\lvert\det\rvert$
to $-\infty$: the map squashes that frequency to almost nothing (a huge density change), and the inverse divides
by it. On exact data the round trip stays at rounding level in the table above (the smallest
$\lvert\hat K\rvert$ only falls to about 0.015), but noise is another matter: the inverse multiplies the noise
at frequency $(u, v)$ by $1/\lvert\hat K(u, v)\rvert$, so its error can be up to $1/\lvert\hat K\rvert_{\min}$
times the noise (in the 2-norm, by Parseval), without bound as $\lvert\hat K\rvert_{\min} \to 0$. The cell below
checks both sides of that bound. `conf_coupling` keeps every $\lvert\hat w\rvert \ge$ `margin`, which bounds both
the log-determinant and the amplification.
"""),
            code(r"""
kernel = 0.5 * base
kernel[1, 1] = 1.0
modulus = torch.fft.fft2(kernel, s=(image_size, image_size)).abs()
noise = 1e-6 * torch.randn(1, image_size, image_size, generator=g, dtype=f64)
err = torch.linalg.vector_norm(periodic_inverse(periodic_conv(x, kernel) + noise, kernel) - x).item()
size = torch.linalg.vector_norm(noise).item()
exact_err = (periodic_inverse(periodic_conv(x, kernel), kernel) - x).abs().max().item()
print(f"scale 0.5: smallest |K| {modulus.min():.3f}, round trip on exact data {exact_err:.1e}")
print(f"noise {size:.2e} -> inverse error {err:.2e}; bounds [{size / modulus.max():.2e}, {size / modulus.min():.2e}]")
assert 0.01 < modulus.min() < 0.02 and exact_err < 1e-12
assert size / modulus.max() * (1 - 1e-6) <= err <= size / modulus.min() * (1 + 1e-6)
"""),
        ],
        6: [
            md(r"""
**Answer (think).** The periodic inverse: every frequency is divided independently (plus two FFTs of
$O(HW\log HW)$ work, which parallelise well), so its parallel depth grows only logarithmically with $HW$. The
emerging convolution's inverse is a back-substitution in which each pixel needs the pixels before it, a chain of
dependent steps that grows with $HW$ whatever the number of cores. On a GPU the periodic inverse scales far
better; the benchmark command measures it on your machine.
"""),
        ],
    },
    "04_sylvester_flows": {
        1: [
            md(r"""
**Answer.** For a given $y$ the inputs are $x = y - u\tanh(a)$ where $a = w^\top x + b$ solves
$a + (w^\top u)\tanh(a) = w^\top y + b$, i.e. $a - 3\tanh a = w^\top y + b$. That function of $a$ is not monotone
(its slope at 0 is $1 - 3 = -2$), so for $w^\top y + b = 0$ it has three roots, $a = 0$ and $a = \pm a^*$ with
$a^* = 3\tanh a^* \approx 2.985$. With $b = 0$ the inputs $x = 0$ and $x = \mp\tanh(a^*)\,u$ (they differ along $u$)
all map to $y = 0$. $\det J = 1 + (w^\top u)\tanh'(a)$ is $1 - 3 = -2 < 0$ at $x = 0$ and about $+0.97$ at the
other two: the map folds space over, which is why the planar flow requires $w^\top u \ge -1$.
"""),
            code(r"""
u = torch.tensor([1.0, 0.0], dtype=f64)
w = torch.tensor([-3.0, 1.0], dtype=f64)  # w^T u = -3, b = 0
a_star = torch.tensor(3.0, dtype=f64)
for _ in range(100):
    a_star = 3 * torch.tanh(a_star)  # fixed point of a = 3 tanh(a): contraction near 2.985
inputs = [torch.zeros(2, dtype=f64), -torch.tanh(a_star) * u, torch.tanh(a_star) * u]
outputs = [x + u * torch.tanh(w @ x) for x in inputs]
dets = [(1 + (w @ u) * (1 - torch.tanh(w @ x) ** 2)).item() for x in inputs]
print(f"a* = {a_star.item():.4f}; outputs {[y.numpy().round(12).tolist() for y in outputs]}")
print(f"det J at the three inputs: {[round(d, 3) for d in dets]}")
assert all(y.abs().max().item() < 1e-12 for y in outputs)
assert dets[0] < 0 < min(dets[1:])
"""),
        ],
        5: [
            md(r"""
**Answer.** The number of terms the bound $D\,c^{n+1}/((n+1)(1-c))$ asks for grows like $1/(1-c)$: 18, 120 and
1260 for $c = 0.5, 0.9, 0.99$ here. The series on this particular $J$ needs fewer (its eigenvalues are smaller
than its norm), but still more and more as $c \to 1$ (the cell below prints how many). A fixed truncation biases
the log-likelihood (and its gradient) by an amount that depends on the Lipschitz constant; the Russian-roulette
estimator stops at a random $n$ and reweights term $k$ by $1/P(N \ge k)$, which makes the estimate unbiased with
a finite expected number of terms.
"""),
            code(r"""
from flowlib.functional import series_terms

needed, bounds = [], []
for c in [0.5, 0.9, 0.99]:
    J = c * J0
    exact = torch.linalg.slogdet(torch.eye(4, dtype=f64) + J).logabsdet.item()
    bounds.append(series_terms(c, 4, 1e-6))
    needed.append(next(n for n in range(1, bounds[-1] + 1) if abs(series_logdet(J, n).item() - exact) < 1e-6))
    print(f"||J|| = {c}: the bound asks for {bounds[-1]} terms, this J needs {needed[-1]}")
assert bounds == [18, 120, 1260]
assert all(n <= b for n, b in zip(needed, bounds)) and needed == sorted(needed) and needed[0] < needed[-1]
"""),
        ],
    },
    "05_cifar10": {
        4: [
            md(r"""
**Answer.** A uniform table gives every value probability $1/256$, which costs $-\log_2(1/256) = 8$ bits, for
every pixel: exactly 8 bits/dim. The fitted histogram gets lower because pixel values are not uniform (its
bits/dim approaches the entropy of the marginal distribution of values, plus a small penalty for being fitted on
other images). No model of independent pixels can beat the entropy of that marginal distribution; a flow can,
because it models the dependence between pixels, which the histogram ignores. So the gap between the histogram
and a trained flow measures how much of the images' information lies in that structure (neighbouring pixels
predict each other) rather than in the distribution of single values.
"""),
            code(r"""
print(f"uniform {uniform:.6f} bits/dim; fitted histogram {fitted:.3f} bits/dim")
assert abs(uniform - 8) < 1e-12 and fitted < uniform
"""),
        ],
        5: [
            md(r"""
**Answer (think).** Lower (better). By Jensen's inequality $\log\frac1K\sum_k w_k \ge \frac1K\sum_k\log w_k$ for
the importance weights $w_k = p(x + u_k)/q(u_k\mid x)$, so the importance-weighted bound is a tighter lower bound
on $\log P(x)$ and reaches it as $K \to \infty$. The one-sample bound, which is what the trainer optimises, is
loose by the gap $\mathrm{KL}(q(u\mid x)\,\Vert\,p(u\mid x))$, and with flow dequantization $q$ is learned, so
that gap changes during training; the trainer reports both: the bound it trains and the estimate that papers
compare.
"""),
        ],
    },
}
"""``ANSWERS[lesson][exercise]``: the cells appended after exercise ``exercise`` of ``lessons/<lesson>_exercises``."""
