"""GELU activation, GPT-2's tanh approximation by default, the exact erf form on request.

tanh form:  y = 0.5 x (1 + t),  t = tanh(u),  u = s (x + 0.044715 x^3),  s = sqrt(2 / pi)
            dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)
erf form:   y = x Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt(2)))
            dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
"""
import math

from .fast import threads
from .tensor import make

S = math.sqrt(2.0 / math.pi)
K = 0.044715


def gelu(x, approximate="tanh"):
    """y = 0.5 x (1 + t);   dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3k x^2))

    The loops run over cache-sized blocks of the flat array, on both cores (threads.py).
    """
    if approximate == "none":
        return gelu_erf(x)
    if approximate != "tanh":
        raise ValueError(f"gelu approximate={approximate!r}: use 'tanh' (GPT-2) or 'none' (erf)")
    xp = x.xp
    a = xp.ascontiguousarray(x.data).reshape(-1)      # flat view of x
    t, y = xp.empty_like(a), xp.empty_like(a)         # t = tanh(u) is saved for backward

    def forward_block(lo, hi):                        # in place, on a[lo:hi]
        ap, tp, yp = a[lo:hi], t[lo:hi], y[lo:hi]
        xp.multiply(ap, ap, out=tp)
        tp *= K
        tp *= ap                                      # k x^3
        tp += ap
        tp *= S                                       # u = s (x + k x^3)
        xp.tanh(tp, out=tp)                           # t
        xp.add(tp, 1, out=yp)
        yp *= ap
        yp *= 0.5                                     # y = 0.5 x (1 + t)
    threads.for_blocks(xp, a.size, forward_block)

    def backward(dy):
        dy = xp.ascontiguousarray(dy).reshape(-1)
        dx = xp.empty_like(a)

        def backward_block(lo, hi):
            ap, tp, d = a[lo:hi], t[lo:hi], dx[lo:hi]
            tmp = xp.empty_like(d)
            xp.multiply(ap, ap, out=d)
            d *= 3 * K
            d += 1
            d *= 0.5 * S
            d *= ap                                   # 0.5 s x (1 + 3k x^2)
            xp.multiply(tp, tp, out=tmp)
            xp.subtract(1, tmp, out=tmp)
            d *= tmp                                  #   ... (1 - t^2)
            xp.multiply(tp, 0.5, out=tmp)
            d += tmp
            d += 0.5                                  #   ... + 0.5 (1 + t)
            d *= dy[lo:hi]                            # dx = dy * dy/dx
        threads.for_blocks(xp, a.size, backward_block)
        return (dx.reshape(x.shape),)
    y = y.reshape(x.shape)
    return make(y, (x,), "gelu", backward)


def gelu_erf(x):
    """y = x Phi(x);   dx = dy * (Phi(x) + x phi(x))"""
    xp, a = x.xp, x.data
    cdf = 0.5 * (1 + _erf(xp, a / math.sqrt(2.0)))
    pdf = xp.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)

    def backward(dy):
        return (dy * (cdf + a * pdf),)
    return make(a * cdf, (x,), "gelu_erf", backward)


def _erf(xp, a):
    """erf elementwise: CuPy and SciPy have one; NumPy does not, so fall back to math.erf."""
    if xp.__name__ == "cupy":
        from cupyx.scipy.special import erf
        return erf(a)
    try:
        from scipy.special import erf
        return erf(a).astype(a.dtype, copy=False)
    except ImportError:
        return xp.asarray(xp.frompyfunc(math.erf, 1, 1)(a), dtype=a.dtype)   # 0-d safe
