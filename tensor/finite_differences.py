"""Check hand-derived gradients against central finite differences, in float64.

For an op f and a random upstream gradient u, define the scalar L(x) = sum(f(x) * u).
Backward gives dL/dx analytically. Numerically, for every element x_j of every input,

    dL/dx_j  ~  (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)

whose error is about eps^2 |f'''| / 6 (truncation, ~1e-13 here) plus about 1e-16 |L| / eps
(rounding, ~1e-10 |L|): with eps = 1e-6 in float64 a correct backward agrees to about 1e-8
for values of order one, and a wrong one shows up immediately.
"""
from dataclasses import dataclass, field

import numpy as np

from .backend import to_numpy
from .tensor import Tensor, no_grad


@dataclass
class GradcheckResult:
    """Per input: analytic and numeric gradients and how far apart they are."""
    max_abs_err: float = 0.0     # max |analytic - numeric| over all elements of all inputs
    max_rel_err: float = 0.0     # max_abs_err / max |numeric| (error relative to gradient size)
    ok: bool = True              # every element within atol + rtol * |numeric|
    analytic: list = field(default_factory=list)
    numeric: list = field(default_factory=list)

    def report(self):
        """A readable account of the worst element, for assertion messages."""
        lines = [f"max abs err {self.max_abs_err:.3e}, max rel err {self.max_rel_err:.3e}"]
        for i, (a, n) in enumerate(zip(self.analytic, self.numeric)):
            if a.size:
                j = int(np.argmax(np.abs(a - n)))
                lines.append(f"  input {i} shape {a.shape}: worst element {j}: "
                             f"analytic {a.flat[j]:.10g} vs numeric {n.flat[j]:.10g}")
        return "\n".join(lines)


def gradcheck(fn, inputs, upstream=None, eps=1e-6, atol=1e-8, rtol=1e-6, seed=0,
              device="cpu"):
    """Compare fn's backward with central differences for every float input.

    fn: takes Tensors (one per input) and returns a Tensor. inputs: arrays; float ones are
    checked (as float64), integer ones (ids, targets) are passed through unchanged.
    upstream: the gradient fed to backward (random normal when None).
    """
    arrays = [np.asarray(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f"
              else np.asarray(x) for x in inputs]
    checked = [a.dtype.kind == "f" for a in arrays]

    def make_tensors(arrs, grad):
        return [Tensor(a, requires_grad=grad and c, device=device,
                       dtype=np.float64 if c else None) for a, c in zip(arrs, checked)]

    tensors = make_tensors(arrays, grad=True)
    out = fn(*tensors)
    u = np.random.default_rng(seed).standard_normal(out.shape) if upstream is None \
        else np.asarray(upstream, dtype=np.float64)
    out.backward(out.xp.asarray(u))

    def loss(arrs):
        with no_grad():
            return float((fn(*make_tensors(arrs, grad=False)).numpy() * u).sum())

    result = GradcheckResult()
    for i, (t, is_float) in enumerate(zip(tensors, checked)):
        if not is_float:
            continue
        analytic = np.zeros_like(arrays[i]) if t.grad is None else to_numpy(t.grad)
        numeric = np.zeros_like(arrays[i])
        x = arrays[i]
        for j in range(x.size):
            original = x.flat[j]
            x.flat[j] = original + eps
            plus = loss(arrays)
            x.flat[j] = original - eps
            minus = loss(arrays)
            x.flat[j] = original
            numeric.flat[j] = (plus - minus) / (2 * eps)
        _record(result, analytic, numeric, atol, rtol)
    return result


def _record(result, analytic, numeric, atol, rtol):
    result.analytic.append(analytic)
    result.numeric.append(numeric)
    if analytic.size == 0:
        return
    err = np.abs(analytic - numeric)
    result.max_abs_err = max(result.max_abs_err, float(err.max()))
    scale = max(float(np.abs(numeric).max()), 1e-12)
    result.max_rel_err = max(result.max_rel_err, float(err.max()) / scale)
    result.ok = result.ok and bool(np.all(err <= atol + rtol * np.abs(numeric)))
