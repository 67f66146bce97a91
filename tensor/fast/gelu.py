"""Fast kernel for tensor/gelu.py's op; same math, blocks on both cores (threads.py).

The tanh form in cache-sized blocks of the flat array, each computed in place with no
whole-array temporaries; the derivation is in tensor/gelu.py. The erf form (approximate=
'none') and the argument check are the reference's.
"""
from . import threads
from ..gelu import K, S
from ..gelu import gelu as reference_gelu
from ..tensor import make


def gelu(x, approximate="tanh"):
    """tensor.gelu.gelu, the tanh form in blocks on both cores."""
    if approximate != "tanh":
        return reference_gelu(x, approximate)           # 'none' (erf), or the ValueError
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
