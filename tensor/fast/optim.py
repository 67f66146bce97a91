"""The optimizer's array work on both cores: nn/optim.py's adamw_update_all (a parameter
group), and clip_grad_norm's sum of squares and scaling, in L2-sized blocks
(threads.py).

Each computes exactly what its reference computes (adamw_update: the same operations in
the same order on every element, so the results are bitwise equal); sum_of_squares adds
the blocks' partial sums in float64 in block order, which is more accurate than one
float32 dot product over a 124M-value gradient and does not depend on the thread count.
"""
import math

from .. import backend
from . import threads

CHUNK = 1 << 16   # elements updated at a time: the update's temporaries stay in L2
SPLIT_MIN = 1 << 18   # elements in a group below which AdamW stays on one core: handing a
                      # few thousand values (the LayerNorm gains' group) to the helper costs
                      # more than it saves


def _flat(*arrays):
    """Flat views of arrays that are all C-contiguous, else None."""
    if all(a.flags.c_contiguous for a in arrays):
        return [a.reshape(-1) for a in arrays]
    return None


def adamw_update_all(arrays, lr, beta1, beta2, eps, weight_decay, t):
    """nn.optim.adamw_update_all: every (p, g, m, v) of a group cut into pieces of at most
    CHUNK elements, the pieces shared by both cores (one hand-off per group, so a model of
    many small parameters uses both cores too). Each element goes through the same
    operations as in the reference, so the results are bitwise equal to it."""
    if not arrays:
        return
    xp = backend.xp_of(arrays[0][0])
    decay = 1 - lr * weight_decay
    v_scale = 1 / math.sqrt(1 - beta2 ** t)          # sqrt(v_hat) = sqrt(v) * v_scale
    step_size = lr / (1 - beta1 ** t)                # lr m_hat = m * step_size

    def update(P, G, M, V, tmp):                         # tmp: scratch of P's shape
        if weight_decay:
            P *= decay                                  # p = p - lr wd p
        M *= beta1
        xp.multiply(G, 1 - beta1, out=tmp)
        M += tmp                                        # m = b1 m + (1 - b1) g
        V *= beta2
        xp.multiply(G, G, out=tmp)
        tmp *= 1 - beta2
        V += tmp                                        # v = b2 v + (1 - b2) g^2
        xp.sqrt(V, out=tmp)
        tmp *= v_scale
        tmp += eps                                      # sqrt(v_hat) + eps
        xp.divide(M, tmp, out=tmp)
        tmp *= step_size                                # lr m_hat / (sqrt(v_hat) + eps)
        P -= tmp

    pieces = []                                         # (p, g, m, v) pieces to update
    for p, g, m, v in arrays:
        flat = _flat(p, g, m, v)
        if flat is None:                                # a strided array: in one piece
            pieces.append((p, g, m, v))
            continue
        if p.size <= CHUNK:
            pieces.append(flat)
            continue
        for lo in range(0, p.size, CHUNK):
            pieces.append(tuple(a[lo:lo + CHUNK] for a in flat))

    def run(lo, hi):                                    # pieces lo..hi-1, one scratch
        scratch = xp.empty(CHUNK, dtype=pieces[lo][0].dtype)
        for P, G, M, V in pieces[lo:hi]:
            flat_piece = P.ndim == 1 and P.flags.c_contiguous
            update(P, G, M, V, scratch[:P.size] if flat_piece else xp.empty_like(P))
    total = sum(piece[0].size for piece in pieces)
    if total < SPLIT_MIN:                               # small: the hand-off costs more
        run(0, len(pieces))
    else:
        threads.for_blocks(xp, len(pieces), run, 1)


def sum_of_squares(g):
    """sum(g^2) as a float, in blocks on both cores, added up in block order in float64."""
    xp = backend.xp_of(g)
    flat = g.reshape(-1)                        # a view when g is contiguous, else a copy
    partial = {}                                # block start -> its sum of squares

    def block(lo, hi):
        partial[lo] = float(xp.vdot(flat[lo:hi], flat[lo:hi]))
    threads.for_blocks(xp, flat.size, block)
    return sum(partial[lo] for lo in sorted(partial))


def scale_(g, scale):
    """g *= scale, in blocks on both cores when g is contiguous (a flat view of it exists)."""
    if not g.flags.c_contiguous:
        g *= scale
        return
    flat = g.reshape(-1)

    def block(lo, hi):
        flat[lo:hi] *= scale
    threads.for_blocks(backend.xp_of(g), flat.size, block)
