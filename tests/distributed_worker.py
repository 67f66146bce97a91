"""What each rank runs in tests/test_distributed.py: `mpiexec -n N python distributed_worker.py
OUT` runs every case on every rank and writes rank r's results to OUT/rank<r>.npz; the test
compares them with one process (the reference functions below, run by the test itself).

The model is a tiny float64 GPT (bit-level checks); micro-batch j of iteration `it` is
drawn from the stream (SEED, it, j), rank r taking j = r, so N ranks together see the
batch that reference_step sees in one process.
"""
import sys
import time
import traceback

import numpy as np

import nn
import tensor
from gpt import GPT, GPTConfig

SEED, V, T, B = 7, 13, 6, 2        # stream seed, vocabulary, time steps, rows per rank
LR, DECAY, STEPS = 1e-2, 0.1, 5


def tiny_gpt(seed=0, dtype=np.float64):
    tensor.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16,
                          dropout=0.0, bias=True))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def micro_batch(it, j, masked=False):
    """x, y (B, T) of micro-batch j at iteration it; masked: targets ignored (-100) at a
    rate that depends on j, so the micro-batches count different numbers of targets."""
    rng = np.random.default_rng([SEED, it, j])
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    if masked:
        y = np.where(rng.random((B, T)) < 0.25 * (j % 4), -100, y)
        y[0, 0] = rng.integers(0, V)                       # at least one counted target
    return x, y


def counted(y):
    return int((y != -100).sum())


def optimizer(model, zero=False, world=None):
    groups = nn.decay_groups(model.parameters(), DECAY)
    return nn.ZeroAdamW(groups, lr=LR, world=world) if zero else nn.AdamW(groups, lr=LR)


def reference_step(model, opt, it, n, masked=False, clip=0.0, separate=False):
    """One process, one step over the micro-batches 0..n-1 of iteration it: gradient
    accumulation with scale 1/n (as train.py's step), or, masked, the whole batch's loss over
    all its counted targets. separate: each micro-batch's gradient made on its own, then
    the n added in order (the sum 2 ranks make). Returns (loss, norm before clipping)."""
    opt.zero_grad()
    batches = [micro_batch(it, j, masked) for j in range(n)]
    if separate:
        total, loss = None, 0.0
        for x, y in batches:
            opt.zero_grad()
            loss += nn.forward_backward(model, x, y, 1.0 / n) / n
            grads = [p.grad for p in opt.params]
            total = grads if total is None else [a + g for a, g in zip(total, grads)]
        for p, g in zip(opt.params, total):
            p.grad = g
    elif masked:
        x, y = (np.concatenate(a) for a in zip(*batches))               # (n B, T)
        _, loss = model(x, y)
        loss.backward()
        loss = float(loss.item())
    else:
        loss = 0.0
        for x, y in batches:
            loss += nn.forward_backward(model, x, y, 1.0 / n) / n
    norm = nn.clip_grad_norm(model.parameters(), clip) if clip else None
    opt.step()
    return loss, norm


def rank_step(model, opt, sync, world, it, masked=False, clip=0.0):
    """The same step on this rank: its micro-batch, then sync.reduce (a GradientReducer, or
    the ZeroAdamW itself), the global clip, the step. Returns (loss, norm)."""
    opt.zero_grad()
    x, y = micro_batch(it, world.rank, masked)
    _, loss = model(x, y)
    loss.backward()
    loss, _, _ = sync.reduce(loss.item(), counted(y) if masked else None)
    norm = sync.clip_grad_norm(clip) if clip else None
    opt.step()
    return loss, norm


def grads_of(model):
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def case_gradients(world, out):
    """One reduce: plain mean (default and tiny buckets), token-weighted, a rank that counts
    nothing, a gradient missing on rank 0, a gradient missing everywhere."""
    for label, masked, bucket_mb in (("mean", False, 25.0), ("mean_small", False, 1e-3),
                                     ("weighted", True, 1e-3), ("holes", True, 1e-3)):
        model = tiny_gpt()
        reducer = nn.GradientReducer(model.parameters(), world, bucket_mb)
        out[f"{label}/buckets"] = np.array(len(reducer.buckets))
        x, y = micro_batch(0, world.rank, masked)
        count = counted(y) if masked else None
        params = model.parameters()
        if label == "holes" and world.rank == world.size - 1:
            count = 0                                   # nothing counted: no forward at all
        else:
            _, loss = model(x, y)
            loss.backward()
        if label == "holes":
            if world.rank == 0:
                params[1].grad = None                   # not reached on rank 0 only
            params[-1].grad = None                      # not reached anywhere
        result = reducer.reduce(loss.item() if count != 0 else float("nan"), count)
        out[f"{label}/loss"], out[f"{label}/count"] = np.array(result.loss), np.array(result.count)
        out[f"{label}/none"] = np.array([p.grad is None for p in params])
        for name, g in grads_of(model).items():
            out[f"{label}/grad/{name}"] = g.copy()


def case_overlap(world, out):
    """The same reduce with buckets started during backward (GradientReducer.start) and
    without: the same bits, and no hang when ranks start different numbers of buckets early
    (a rank that runs no backward at all; a parameter reached on some ranks only)."""
    for label, masked in (("ovl_mean", False), ("ovl_holes", True)):
        for mode in ("plain", "overlap"):
            model = tiny_gpt()
            extra = tensor.Tensor(np.linspace(0.5, 1.5, 3), requires_grad=True, dtype="float64")
            reducer = nn.GradientReducer([extra] + model.parameters(), world, bucket_mb=1e-3)
            x, y = micro_batch(0, world.rank, masked)
            count = counted(y) if masked else None
            idle = label == "ovl_holes" and world.rank == world.size - 1
            count = 0 if idle else count
            hook = reducer.start(count) if mode == "overlap" else None
            loss = float("nan")
            if not idle:
                _, loss = model(x, y)
                if label == "ovl_holes" and world.rank != 0:        # extra: not on rank 0
                    loss = loss + (extra * extra).sum() * 0.01
                loss.backward(leaf_done=hook)
                loss = loss.item()
            if mode == "overlap":
                out[f"{label}/early"] = np.array(len(reducer._started[1]))
            result = reducer.reduce(loss, count)
            out[f"{label}/{mode}/loss"] = np.array(result.loss)
            out[f"{label}/{mode}/grads"] = np.concatenate(
                [p.grad.reshape(-1) if p.grad is not None else [np.inf] for p in reducer.params])


def case_collectives(world, out):
    """ChainerMN's checks, twice: gradients filled with the rank average to the mean rank;
    a broadcast gives rank 0's values; sum and any; stop reaches every rank."""
    model = tiny_gpt()
    reducer = nn.GradientReducer(model.parameters(), world, bucket_mb=1e-3)
    for k in (1, 2):
        for p in model.parameters():
            p.grad = np.full(p.shape, float(k * world.rank))
        result = reducer.reduce(0.0, stop=world.rank == 1 and k == 2)
        out[f"fill{k}/grads"] = np.concatenate([p.grad.reshape(-1) for p in model.parameters()])
        out[f"fill{k}/stop"] = np.array(result.stop)
        a = np.full(5, 10.0 * k + world.rank)
        out[f"bcast{k}"] = world.broadcast_(a).copy()
    out["sum"] = np.array(world.sum(world.rank + 1))
    out["any"] = np.array([world.any(world.rank == 1), world.any(False)])


def case_broadcast(world, out):
    """Differently seeded models become rank 0's."""
    model = tiny_gpt(seed=100 + world.rank)
    world.broadcast_parameters(model.parameters())
    for name, p in model.named_parameters():
        out[f"param/{name}"] = p.data.copy()


def case_agree(world, out):
    """Same settings pass; a different setting or data hash on the last rank is refused."""
    world.check_agree("settings", {"learning_rate": 0.1, "batch_size": 4})
    last = world.rank == world.size - 1
    for label, what, value in (("settings", "settings",
                                {"learning_rate": 0.1, "batch_size": 5 if last else 4}),
                               ("data", "data", "sha256:abc" + "d" * last)):
        try:
            world.check_agree(what, value)
            out[f"agree/{label}"] = np.array("no error")
        except ValueError as e:
            out[f"agree/{label}"] = np.array(str(e))


def case_training(world, out):
    """STEPS AdamW steps, plain and ZeRO-1, with and without masks and clipping."""
    for label, zero, masked, clip in (("ddp_clip", False, False, 0.05),
                                      ("ddp_masked", False, True, 0.0),
                                      ("zero_clip", True, False, 0.05),
                                      ("zero_masked_clip", True, True, 0.05)):
        model = tiny_gpt()
        opt = optimizer(model, zero, world)
        sync = opt if zero else nn.GradientReducer(model.parameters(), world, 1e-3)
        steps = [rank_step(model, opt, sync, world, it, masked, clip) for it in range(STEPS)]
        out[f"{label}/losses"] = np.array([loss for loss, _ in steps])
        out[f"{label}/norms"] = np.array([norm or 0.0 for _, norm in steps])
        for name, p in model.named_parameters():
            out[f"{label}/param/{name}"] = p.data.copy()
        state = opt.state_dict()                        # ZeroAdamW: a collective
        if state is not None:
            for key in ("m", "v"):
                out[f"{label}/state/{key}"] = state[key]
            out[f"{label}/state/t"] = np.array(state["t"])


def case_float32(world, out):
    """float32, as training runs: plain with clipping, ZeRO-1 without."""
    for label, zero, clip in (("f32_ddp_clip", False, 0.05), ("f32_zero", True, 0.0)):
        model = tiny_gpt(dtype=np.float32)
        opt = optimizer(model, zero, world)
        sync = opt if zero else nn.GradientReducer(model.parameters(), world, 1e-3)
        out[f"{label}/losses"] = np.array([rank_step(model, opt, sync, world, it, False, clip)[0]
                                           for it in range(STEPS)])
        out[f"{label}/params"] = np.concatenate([p.data.reshape(-1) for p in model.parameters()])


def case_resume(world, out):
    """1 -> N: one process's nn.AdamW state after 3 steps, loaded into ZeroAdamW on N ranks;
    N -> 1: ZeroAdamW's state gathered after 3 steps, loaded into one process's nn.AdamW.
    Both continue to STEPS."""
    model = tiny_gpt()
    single = optimizer(model)
    for it in range(3):
        reference_step(model, single, it, world.size)
    state, weights = single.state_dict(), model.state_dict()
    model = tiny_gpt()
    model.load_state_dict(weights)
    zero = optimizer(model, True, world)
    zero.load_state_dict(state)
    for it in range(3, STEPS):
        rank_step(model, zero, zero, world, it)
    out["to_n/params"] = np.concatenate([p.data.reshape(-1) for p in model.parameters()])

    model = tiny_gpt()
    zero = optimizer(model, True, world)
    for it in range(3):
        rank_step(model, zero, zero, world, it)
    state = world.broadcast_object(zero.state_dict())   # gathered on rank 0, then to all
    single = optimizer(model)
    single.load_state_dict(state)
    for it in range(3, STEPS):
        reference_step(model, single, it, world.size)
    out["to_1/params"] = np.concatenate([p.data.reshape(-1) for p in model.parameters()])


def main(out_dir):
    world = nn.distributed.world()
    out, t0 = {"size": np.array(world.size)}, time.perf_counter()
    try:
        for case in (case_gradients, case_overlap, case_collectives, case_broadcast, case_agree,
                     case_training, case_float32, case_resume):
            case(world, out)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        world.abort(1)                                  # no rank left waiting
    out["seconds"] = np.array(time.perf_counter() - t0)
    np.savez(f"{out_dir}/rank{world.rank}.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
