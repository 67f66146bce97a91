"""DataParallel: both CPU cores on one training step, by splitting the batch in two.

tensor/fast/threads.py splits the biggest loops of each op over the two cores, and OpenBLAS
splits each matmul. For a small model that split costs more than it gains: at nanoGPT's
CPU config (C = 128, 768 rows per matmul) a two-thread matmul runs no faster than a
one-thread one, and most ops are too short to be worth handing half to another thread.
So split the work higher up instead, the way data-parallel training splits a batch over
GPUs: this thread runs forward + backward on the first half of the rows, a helper thread
runs the second half at the same time, each on one core with a one-thread BLAS.

The helper runs a *twin*: a second copy of the model's modules whose parameters share the
model's weight arrays (nothing copied; re-pointed at every call, so loading a checkpoint
or a new optimizer is seen) but keep their own gradients. At the end the twin's gradients
are added into the model's. With n1 and n2 rows in the halves, each loss a mean over its
own rows:

    loss   = (n1 loss1 + n2 loss2) / (n1 + n2)
    dL/dw  = (n1 dloss1/dw + n2 dloss2/dw) / (n1 + n2)

which is the whole batch's mean loss and gradient when every target counts (as in
training): gradient accumulation over two micro-batches, run at the same time. Dropout in
the second half draws from its own random stream (backend.random_stream), so runs repeat
exactly whether the halves ran in parallel or one after the other.

    dp = nn.DataParallel(model)          # loss_fn(module, x, y): default module(x, y)[1]
    loss = dp.forward_backward(x, y)     # as nn.forward_backward(model, x, y)

Costs: one extra gradient buffer (the twin's, the size of the weights) and a second set of
activations of half the size. When it pays is measured in benchmarks/README.md; the
training CLI's --parallel auto turns it on for small models on the CPU only.
"""
import copy

import tensor.fast
from tensor import backend
from tensor.fast import threads
from tensor.tensor import accumulate_grad

from .module import Module

AUTO_MAX_PARAMETERS = 64_000_000    # --parallel auto: above this the twin's gradients (4 bytes
                                    # per parameter) cost more memory than the step saves time


def worth_it(model):
    """The training CLI's --parallel auto: the speed machinery switched on (tensor.fast),
    a model on the CPU with at most AUTO_MAX_PARAMETERS parameters, and two threads that
    can run at once (tensor/fast/threads.py)."""
    return (tensor.fast.enabled() and threads.can_run_pair()
            and model.parameters()[0].device == "cpu"
            and model.num_parameters() <= AUTO_MAX_PARAMETERS)


def model_loss(module, x, y):
    """The default loss_fn: the loss a model returns, `_, loss = module(x, y)`."""
    return module(x, y)[1]


class DataParallel:
    """Run forward + backward on the two halves of a batch at once, on the two CPU cores."""

    def __init__(self, model, loss_fn=None):
        if not isinstance(model, Module):
            raise TypeError(f"DataParallel needs a Module, got {type(model).__name__}")
        self.model, self.loss_fn = model, loss_fn or model_loss
        params = model.parameters()
        # deepcopy with every weight array already "copied" as itself and every gradient
        # as None: the twin's modules and Parameters are new objects, its weight arrays are
        # the model's own (ties stay ties)
        memo = {id(p.data): p.data for p in params}
        memo.update({id(p.grad): None for p in params if p.grad is not None})
        self.twin = copy.deepcopy(model, memo)
        self.pairs = list(zip(params, self.twin.parameters()))     # (model's, twin's)

    def _sync_twin(self):
        """Point the twin at the model's current arrays and empty its gradients."""
        self.twin.train(self.model.training)
        for p, t in self.pairs:
            t.data, t.grad = p.data, None

    def forward_backward(self, x, y, scale=1.0, leaf_done=None):
        """Forward and backward of `scale * loss_fn(model, x, y)` on the whole batch (rows of
        x and y), as two halves at once; gradients are added into the model's .grad (as
        backward() does). Returns the batch's loss as a float (unscaled). leaf_done is not
        called: the twin's gradients are added only after both halves' backward, so a
        GradientReducer starts every bucket in reduce()."""
        rows, half = len(x), len(x) // 2

        def run(module, lo, hi, stream):
            with backend.random_stream(stream):
                loss = self.loss_fn(module, x[lo:hi], y[lo:hi])
                (loss * (scale * (hi - lo) / rows)).backward()     # n_i / (n1 + n2) weights
                return float(loss.item())
        if rows < 2:                                                # nothing to split
            return run(self.model, 0, rows, 0)
        self._sync_twin()
        first, second = threads.run_pair(lambda: run(self.model, 0, half, 0),
                                         lambda: run(self.twin, half, rows, 1))
        for p, t in self.pairs:
            if t.grad is not None:
                accumulate_grad(p, t.grad, fresh=True)              # p.grad += twin's
                t.grad = None
        return (half * first + (rows - half) * second) / rows
