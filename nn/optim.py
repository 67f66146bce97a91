"""Optimizers (AdamW, SGD with momentum), gradient clipping and nanoGPT's learning-rate schedule.

Speed: a small GPT has dozens of parameter arrays, and updating each with a handful of
NumPy calls costs more Python time than arithmetic. So an optimizer packs every parameter
into ONE flat buffer and makes each parameter's `.data` a view into it; gradients get a flat
buffer too. A step is then a few whole-buffer array operations, whatever the parameter
count. Parameter groups (e.g. decayed vs not) are contiguous segments of those buffers.
On the CPU those operations run over L2-sized pieces of the buffers, on both cores
(tensor/threads.py).

Create the optimizer after moving the model to its device (`model.to`), since moving
replaces the arrays the views point into.
"""
import math

from tensor import backend, threads


CHUNK = 1 << 16   # elements updated at a time on the CPU: the update's temporaries stay in L2


class FlatOptimizer:
    """Packs the parameters of each group into flat data and grad buffers (see above)."""

    def __init__(self, params, defaults):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups, self.params, seen = [], [], set()
        for group in groups:
            unique = []
            for p in group["params"]:          # each parameter once, even if listed twice
                if id(p) not in seen:
                    seen.add(id(p))
                    unique.append(p)
            if unique:
                self.param_groups.append({**defaults, **group, "params": unique})
                self.params.extend(unique)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        first = self.params[0]
        self.xp, self.device = first.xp, first.device
        total = sum(p.size for p in self.params)
        self.flat = self.xp.empty(total, dtype=first.dtype)         # every parameter, end to end
        self.flat_grad = self.xp.zeros(total, dtype=first.dtype)    # every gradient, same layout
        self.views, start = [], 0                                   # (data view, grad view)
        for group in self.param_groups:
            group["start"] = start
            for p in group["params"]:
                end = start + p.size
                self.flat[start:end] = p.data.reshape(-1)
                p.data = self.flat[start:end].reshape(p.shape)
                self.views.append(self.flat_grad[start:end].reshape(p.shape))
                start = end
            group["end"] = start
        self.zero_grad()

    def zero_grad(self):
        """Empty every gradient (.grad = None, as torch's set_to_none) and point each
        parameter's grad_buffer at its view of the flat gradient buffer: the next backward()
        writes the first gradient straight into the buffer (tensor.py's accumulate_grad, and
        linear's dW in place), and later ones add to it. Nothing is filled with zeros."""
        for p, grad_view in zip(self.params, self.views):
            p.grad, p.grad_buffer = None, grad_view

    def gather_grads(self):
        """Make sure every gradient is in the flat buffer: a .grad that was replaced (e.g. by
        model.zero_grad(), which sets None) is copied in; a parameter that got no gradient
        reads as zeros. Returns the flat gradient."""
        for p, grad_view in zip(self.params, self.views):
            if p.grad is None:
                grad_view.fill(0)
            elif p.grad is not grad_view:
                grad_view[...] = p.grad
            p.grad = grad_view
        return self.flat_grad

    def segments(self):
        """(group, param slice, grad slice) for each parameter group."""
        for group in self.param_groups:
            s = slice(group["start"], group["end"])
            yield group, self.flat[s], self.flat_grad[s]


class AdamW(FlatOptimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:

        p <- p - lr * wd * p                        (decay, not part of the gradient)
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})
        self.m = self.xp.zeros_like(self.flat)       # first moment (mean of gradients)
        self.v = self.xp.zeros_like(self.flat)       # second moment (mean of squared gradients)
        self.t = 0                                   # steps taken

    def step(self):
        xp = self.xp
        self.gather_grads()
        self.t += 1
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            decay = 1 - lr * group["weight_decay"]
            v_scale = 1 / math.sqrt(1 - b2 ** self.t)            # sqrt(v_hat) = sqrt(v) * v_scale
            step_size = lr / (1 - b1 ** self.t)                  # lr m_hat = m * step_size
            start = group["start"]

            def update(lo, hi):                                  # one L2-sized piece
                s = slice(start + lo, start + hi)
                p, g, m, v = self.flat[s], self.flat_grad[s], self.m[s], self.v[s]
                tmp = xp.empty_like(p)
                if decay != 1:
                    p *= decay                                  # p = p - lr wd p
                m *= b1
                xp.multiply(g, 1 - b1, out=tmp)
                m += tmp                                        # m = b1 m + (1 - b1) g
                v *= b2
                xp.multiply(g, g, out=tmp)
                tmp *= 1 - b2
                v += tmp                                        # v = b2 v + (1 - b2) g^2
                xp.sqrt(v, out=tmp)
                tmp *= v_scale
                tmp += eps                                      # sqrt(v_hat) + eps
                xp.divide(m, tmp, out=tmp)
                tmp *= step_size                                # lr m_hat / (sqrt(v_hat) + eps)
                p -= tmp
            threads.for_blocks(xp, group["end"] - start, update, CHUNK)

    def state_dict(self):
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state):
        _check_state(state, ("t", "m", "v"), self.flat.shape)
        self.t = int(state["t"])
        self.m[...] = backend.to_device(state["m"], self.device)
        self.v[...] = backend.to_device(state["v"], self.device)


class SGD(FlatOptimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD (no dampening):

        d = g + wd * p,   buf <- momentum * buf + d,   p <- p - lr * buf
    """

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.buf = self.xp.zeros_like(self.flat)
        self.t = 0

    def step(self):
        self.gather_grads()
        self.t += 1
        for group, p, g in self.segments():
            d = g + group["weight_decay"] * p if group["weight_decay"] else g
            if group["momentum"]:
                buf = self.buf[group["start"]:group["end"]]
                buf *= group["momentum"]
                buf += d
                d = buf
            p -= group["lr"] * d

    def state_dict(self):
        return {"t": self.t, "buf": self.buf}

    def load_state_dict(self, state):
        _check_state(state, ("t", "buf"), self.flat.shape)
        self.t = int(state["t"])
        self.buf[...] = backend.to_device(state["buf"], self.device)


def _check_state(state, keys, shape):
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"optimizer state is missing {', '.join(missing)}")
    for k in keys[1:]:
        if tuple(state[k].shape) != tuple(shape):
            raise ValueError(f"optimizer state '{k}' has shape {tuple(state[k].shape)}, "
                             f"but the parameters need {tuple(shape)}: a different model?")


def decay_groups(params, weight_decay):
    """nanoGPT's parameter groups: 2-D+ weights (matmuls, embeddings) decay; biases and
    LayerNorm gains (1-D) do not."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm.

    Returns the norm before clipping (as torch.nn.utils.clip_grad_norm_ does).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.xp_of(grads[0])
    total = math.sqrt(sum(_sum_of_squares(xp, g) for g in grads))
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for g in grads:
            _scale_in_place(xp, g, scale)
    return total


def _sum_of_squares(xp, g):
    """sum(g^2) as a float, in blocks on both cores (threads.py), added up in block order
    so the result does not depend on the thread count."""
    flat = g.reshape(-1)                        # a view when g is contiguous, else a copy
    partial = {}                                # block start -> its sum of squares

    def block(lo, hi):
        partial[lo] = float(xp.vdot(flat[lo:hi], flat[lo:hi]))
    threads.for_blocks(xp, flat.size, block)
    return sum(partial[lo] for lo in sorted(partial))


def _scale_in_place(xp, g, scale):
    """g *= scale, in blocks on both cores when g is contiguous (a flat view of it exists)."""
    if not g.flags.c_contiguous:
        g *= scale
        return
    flat = g.reshape(-1)

    def block(lo, hi):
        flat[lo:hi] *= scale
    threads.for_blocks(xp, flat.size, block)


def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's schedule: linear warmup, then cosine decay to min_lr, then min_lr.

    it < warmup_iters:            learning_rate * (it + 1) / (warmup_iters + 1)
    it > lr_decay_iters:          min_lr
    otherwise:                    min_lr + 0.5 (1 + cos(pi * r)) (learning_rate - min_lr),
                                  r = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    """
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(lr_decay_iters - warmup_iters, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)
