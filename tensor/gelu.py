"""GELU activation, GPT-2's tanh approximation by default, the exact erf form on request.

tanh form:  y = 0.5 x (1 + t),  t = tanh(u),  u = s (x + k x^3),  s = sqrt(2 / pi), k = 0.044715
            dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3k x^2)
erf form:   y = x Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt(2)))
            dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
"""
import math

from .tensor import make

S = math.sqrt(2.0 / math.pi)
K = 0.044715


def gelu(x, approximate="tanh"):
    """y = 0.5 x (1 + t);   dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3k x^2))

    t = tanh(s (x + k x^3)), saved for backward.
    """
    if approximate == "none":
        return gelu_erf(x)
    if approximate != "tanh":
        raise ValueError(f"gelu approximate={approximate!r}: use 'tanh' (GPT-2) or 'none' (erf)")
    xp, a = x.xp, x.data
    t = xp.tanh(S * (a + K * a * a * a))
    y = 0.5 * a * (1 + t)

    def backward(dy):
        return (dy * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * S * (1 + 3 * K * a * a)),)
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
