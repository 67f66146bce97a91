"""Optimizers (AdamW, SGD with momentum), gradient clipping and nanoGPT's learning-rate schedule.

Each parameter keeps its own arrays: an optimizer reads `p.data` and `p.grad` at every
step and keeps its state (AdamW's moments m and v) per parameter, made at the first step on
the parameter's device. So the model, `model.to(device)` and the optimizer may be made in
any order. Frozen parameters (requires_grad False) get no state at all: the memory of
an optimizer is proportional to the trainable parameters. The updates are whole-array
math (adamw_update, below); tensor.fast registers a kernel that runs the same update over
a whole parameter group in cache-sized pieces on both CPU cores.
"""
import math

import numpy as np

from tensor import backend, dispatch


class Optimizer:
    """Parameter groups (dicts with "params" and settings) and per-parameter state.

    Only trainable parameters (requires_grad True when the optimizer is made) are kept:
    frozen ones are left out of the groups, the state and state_dict. Freezing or
    unfreezing later means making a new optimizer."""

    def __init__(self, params, defaults, state_names):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups, self.params, seen, frozen = [], [], set(), 0
        for group in groups:
            unique = []
            for p in group["params"]:          # each parameter once, even if listed twice
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if p.requires_grad:            # a frozen parameter gets no state at all
                    unique.append(p)
                else:
                    frozen += 1
            if unique:
                self.param_groups.append({**defaults, **group, "params": unique})
                self.params.extend(unique)
        if not self.params and frozen:
            raise ValueError(f"optimizer got only frozen parameters ({frozen} of them, all "
                             "requires_grad=False): nothing to train; unfreeze some "
                             "(model.unfreeze(...)) before making the optimizer")
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.state_names = state_names     # the arrays kept per parameter, e.g. ("m", "v")
        self.state = {}                    # id(p) -> {name: array like p.data}
        self.t = 0                         # steps taken

    def zero_grad(self):
        """Empty every gradient (.grad = None, as torch's set_to_none=True)."""
        for p in self.params:
            p.grad = None

    def state_of(self, p):
        """The state arrays of p, made (zeros, on p's device) the first time."""
        arrays = self.state.get(id(p))
        if arrays is None or arrays[self.state_names[0]].shape != p.shape or \
                backend.device_of(arrays[self.state_names[0]]) != p.device:
            arrays = self.state[id(p)] = self._moved(arrays, p)
        return arrays

    def _moved(self, arrays, p):
        if arrays is None:
            return {name: p.xp.zeros_like(p.data) for name in self.state_names}
        return {name: backend.to_device(a, p.device) for name, a in arrays.items()}

    def state_dict(self):
        """{"t": steps, name: every parameter's array end to end, in parameter order}
        (zeros for a parameter not stepped yet), the layout checkpoints store: the
        trainable parameters only, so its arrays have num_trainable_parameters() values."""
        out = {"t": self.t}
        for name in self.state_names:
            out[name] = np.concatenate(self.state_parts(name))
        return out

    def state_parts(self, name):
        """state_dict()[name] as the list of its pieces, one flat array per parameter (the
        arrays themselves on the CPU: a checkpoint writes them without joining them)."""
        return [backend.to_numpy(self.state_of(p)[name]).reshape(-1) for p in self.params]

    def check_state(self, state):
        """A ValueError unless state holds "t" and, per state name, one flat array of
        num_trainable_parameters() values (the layout state_dict() writes)."""
        total = sum(p.size for p in self.params)
        missing = [k for k in ("t",) + self.state_names if k not in state]
        if missing:
            raise ValueError(f"optimizer state is missing {', '.join(missing)}")
        for name in self.state_names:
            if tuple(state[name].shape) != (total,):
                raise ValueError(f"optimizer state '{name}' has shape "
                                 f"{tuple(state[name].shape)}, but the parameters need "
                                 f"({total},): a different model, or other "
                                 "parameters frozen?")

    def load_state_dict(self, state):
        self.check_state(state)
        self.t = int(state["t"])
        start = 0
        for p in self.params:
            arrays = self.state_of(p)
            for name in self.state_names:
                flat = state[name][start:start + p.size].reshape(p.shape)
                arrays[name][...] = backend.to_device(flat, p.device)
            start += p.size


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW step of one parameter, in place on p, m and v (arrays of one shape):

        p <- p - lr wd p                              (decay, not part of the gradient)
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
        p <- p - lr m_hat / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
    """
    xp = backend.xp_of(p)
    if weight_decay:
        p *= 1 - lr * weight_decay
    m *= beta1
    m += g * (1 - beta1)
    v *= beta2
    v += (g * g) * (1 - beta2)
    denominator = xp.sqrt(v) * (1 / math.sqrt(1 - beta2 ** t)) + eps    # sqrt(v_hat) + eps
    p -= (m / denominator) * (lr / (1 - beta1 ** t))                    # lr m_hat / ...


def adamw_update_all(arrays, lr, beta1, beta2, eps, weight_decay, t):
    """adamw_update for every (p, g, m, v) of a parameter group. (tensor.fast's kernel runs
    the whole group as one set of cache-sized pieces shared by both cores.)"""
    for p, g, m, v in arrays:
        adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW; the
    update of each parameter is adamw_update above."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay}, ("m", "v"))

    def step(self):
        update_all = dispatch.kernel("adamw_update_all", adamw_update_all)
        self.t += 1
        for group in self.param_groups:
            b1, b2 = group["betas"]
            arrays = [(p.data, p.grad, *self.state_of(p).values())   # (p, g, m, v)
                      for p in group["params"] if p.grad is not None]
            update_all(arrays, group["lr"], b1, b2, group["eps"], group["weight_decay"], self.t)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD (no dampening):

        d = g + wd * p,   buf <- momentum * buf + d,   p <- p - lr * buf
    """

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum,
                                  "weight_decay": weight_decay}, ("buf",))

    def step(self):
        self.t += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad + group["weight_decay"] * p.data if group["weight_decay"] else p.grad
                if group["momentum"]:
                    buf = self.state_of(p)["buf"]
                    buf *= group["momentum"]
                    buf += d
                    d = buf
                p.data -= group["lr"] * d


def decay_groups(params, weight_decay):
    """nanoGPT's parameter groups: 2-D+ weights (matmuls, embeddings) decay; biases and
    LayerNorm gains (1-D) do not. Frozen parameters (requires_grad False) are left out."""
    params = list(params)
    if params and not any(p.requires_grad for p in params):
        raise ValueError(f"decay_groups got only frozen parameters ({len(params)} of them, all "
                         "requires_grad=False): nothing to train; unfreeze some "
                         "(model.unfreeze(...)) before making the optimizer")
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm:

        norm = sqrt(sum over every gradient of sum(g^2)),   g <- g * max_norm / (norm + 1e-6)

    (only when that factor is below 1). Returns the norm before clipping, as
    torch.nn.utils.clip_grad_norm_ does. Parameters without a gradient (frozen ones, or
    ones the loss did not reach) count for nothing.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sum_sq = dispatch.kernel("sum_of_squares", sum_of_squares)
    total = math.sqrt(sum(sum_sq(g) for g in grads))
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        scale_ = dispatch.kernel("scale_", scale_in_place)
        for g in grads:
            scale_(g, scale)
    return total


def sum_of_squares(g):
    """sum(g^2) as a Python float."""
    flat = g.reshape(-1)
    return float(backend.xp_of(g).vdot(flat, flat))


def scale_in_place(g, scale):
    """g *= scale."""
    g *= scale


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
