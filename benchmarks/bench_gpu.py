"""python benchmarks/bench_gpu.py: our training step and generation on CuPy against PyTorch
CUDA eager (float32), same shapes, same run, each in its own child process, the children
taking turns (the order flips every round), timers synchronised with the device.

    python benchmarks/bench_gpu.py                          # M, L, baby-gpt, gpt2 on cuda
    python benchmarks/bench_gpu.py --shapes baby-gpt --rounds 3 --json gpu.json
    python benchmarks/bench_gpu.py --device cpu --quick     # the smoke run (tests, CPU)

Train step (`step` kind): zero_grad, forward + backward of one batch, clip 1.0, AdamW;
ours = tinygrad_gpt.train's step on a GPT on --device, PyTorch = nanoGPT's model
(benchmarks/nanogpt_reference.py) on the same device. Timed: --steps steps after --warmup,
each between two device synchronisations (cupy Device.synchronize / torch.cuda.synchronize).
Reported: median ms/step, tokens/s, the device's peak memory (CuPy: the memory pool's
largest total_bytes seen after a step; PyTorch: max_memory_reserved), the ratio
PyTorch ms / ours ms (> 1: ours faster) and the loss after the last step.
Generation (`generate` kind, batch 1, --tokens new tokens from an 8-token prompt): ours with
and without the KV cache, PyTorch's (nanoGPT's uncached loop); tokens/s.

Shapes (any case; vocab 50304 but baby-gpt's 65): M (6/6/384, block 256, B 4), L
(12/12/768, block 256, B 2), baby-gpt (nanoGPT's shakespeare_char: 6/6/384, block 256,
B 64), gpt2 (GPT-2 small, 12/12/768, block 1024, B 8); XS for --quick.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = {
    "M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=4, vocab_size=50304,
              bias=False),
    "L": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch=2, vocab_size=50304,
              bias=True),
    "BABY-GPT": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64,
                     vocab_size=65, bias=False),
    "GPT2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch=8,
                 vocab_size=50304, bias=True),
    "XS": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch=2, vocab_size=65,
               bias=True),
}
SEED, LR, BETAS, DECAY, CLIP = 1337, 6e-4, (0.9, 0.99), 0.1, 1.0


def batch(shape):
    import numpy as np
    rng = np.random.default_rng(SEED)
    size = (shape["batch"], shape["block_size"])
    return rng.integers(0, shape["vocab_size"], size), rng.integers(0, shape["vocab_size"], size)


def timed(step, sync, steps, warmup, memory):
    """Median and all step times (s), each step between two synchronisations, and the peak
    device memory (MiB) that memory() reports after each step."""
    for _ in range(warmup):
        step()
    sync()
    times, peak = [], memory()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        peak = max(peak, memory())
    return {"median_s": statistics.median(times), "times_s": times, "peak_mb": peak}


def ours_device(device):
    """(sync, memory in MiB) for our arrays on device."""
    if device == "cpu":
        return (lambda: None), common.peak_rss_mb
    import cupy
    pool = cupy.get_default_memory_pool()
    return cupy.cuda.Device().synchronize, lambda: pool.total_bytes() / 2 ** 20


def child_ours(kind, shape, args):
    import numpy as np
    import nn
    import tensor.fast
    from gpt import GPT, GPTConfig
    from tensor import manual_seed
    from tinygrad_gpt import train
    from tinygrad_gpt.settings import TrainConfig
    if args.device == "cpu":
        tensor.fast.enable()
    manual_seed(SEED)
    model = GPT(GPTConfig(**common.model_sizes(shape))).to(args.device)
    sync, memory = ours_device(args.device)
    if kind == "generate":
        model.eval()
        idx = np.random.default_rng(SEED).integers(0, shape["vocab_size"], (1, 8))
        result = {}
        for cache in (True, False):
            def run():
                model.generate(idx, args.tokens, temperature=1.0, rng=0, use_cache=cache)
            t = timed(run, sync, args.reps, 1, memory)
            result["cached" if cache else "uncached"] = args.tokens / t["median_s"]
        return result
    opt = nn.AdamW(nn.decay_groups(model.parameters(), DECAY), lr=LR, betas=BETAS)
    x, y = batch(shape)
    config = TrainConfig(grad_clip=CLIP, device=args.device)
    forward_backward = (lambda xb, yb, scale, hook=None:
                        nn.forward_backward(model, xb, yb, scale, hook))
    losses = []

    def step():
        losses.append(train.step(model, opt, forward_backward, x, y, LR, config))
    return {**timed(step, sync, args.steps, args.warmup, memory), "loss": losses[-1]}


def child_torch(kind, shape, args):
    import torch
    import nanogpt_reference as ref
    torch.manual_seed(SEED)
    dev = torch.device(args.device)
    model = ref.GPT(ref.GPTConfig(**common.model_sizes(shape))).to(dev)
    if args.device == "cpu":
        torch.set_num_threads(2)
        sync, memory = (lambda: None), common.peak_rss_mb
    else:
        sync = torch.cuda.synchronize
        memory = lambda: torch.cuda.max_memory_reserved() / 2 ** 20   # noqa: E731
    if kind == "generate":
        model.eval()
        idx = torch.randint(0, shape["vocab_size"], (1, 8), device=dev)
        with torch.no_grad():
            t = timed(lambda: model.generate(idx, args.tokens, temperature=1.0), sync,
                      args.reps, 1, memory)
        return {"uncached": args.tokens / t["median_s"]}
    opt = model.configure_optimizers(DECAY, LR, BETAS, args.device)
    x, y = (torch.from_numpy(a).to(dev) for a in batch(shape))
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(loss)
    result = timed(step, sync, args.steps, args.warmup, memory)
    return {**result, "loss": float(losses[-1].item())}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="M,L,baby-gpt,gpt2")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--kinds", default="step,generate", help="step, generate or both")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="generated tokens per run")
    p.add_argument("--reps", type=int, default=3, help="generation runs per child")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--quick", action="store_true", help="shape XS, 2 steps, 1 round")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--child", choices=("ours", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.steps, args.warmup, args.rounds, args.tokens, args.reps = \
            "XS", 2, 1, 1, 8, 1
    args.shapes = common.parse_shapes(p, args.shapes, tuple(SHAPES))
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kinds or set(args.kinds) - {"step", "generate"}:
        p.error("--kinds: step, generate, or both")
    return args


def run_child(who, kind, name, args):
    argv = [os.path.abspath(__file__), "--child", who, "--kind", kind, "--shape", name,
            "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--tokens", str(args.tokens), "--reps", str(args.reps)]
    return common.run_child(argv, common.thread_env(2) if args.device == "cpu" else None)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child = child_ours if args.child == "ours" else child_torch
        common.emit_result(child(args.kind, SHAPES[args.shape], args))
        return 0
    who = ["ours"] + ([] if args.no_torch else ["torch"])
    print(f"# bench_gpu on {args.device}: {', '.join(args.shapes)}; {args.rounds} rounds; "
          f"load average {common.load_average()}", flush=True)
    results = {}
    for name in args.shapes:
        shape = SHAPES[name]
        for kind in args.kinds:
            runs = {w: [] for w in who}
            for r in range(args.rounds):
                for w in (who if r % 2 == 0 else who[::-1]):
                    runs[w].append(run_child(w, kind, name, args))
                    print(f"  {name} {kind} round {r + 1} {w}: {runs[w][-1]}"[:300], flush=True)
            results[f"{name}/{kind}"] = runs
            print(summary(name, kind, shape, runs), flush=True)
    if args.json:
        common.write_json(args.json, {"device": args.device, "results": results,
                                      "machine": common.machine_info()})
    return 0


def summary(name, kind, shape, runs):
    """One Markdown row per framework: the pooled median over the rounds that succeeded."""
    ok = {w: [r for r in rs if "error" not in r] for w, rs in runs.items()}
    if kind == "generate":
        rows = [[w] + [f"{statistics.median(r[k] for r in rs):,.1f}" if rs and k in rs[0]
                       else "" for k in ("cached", "uncached")] for w, rs in ok.items()]
        return common.markdown_table([f"{name} generate", "cached tok/s", "uncached tok/s"],
                                     rows)
    tokens = shape["batch"] * shape["block_size"]
    ms = {w: statistics.median(t for r in rs for t in r["times_s"]) * 1e3
          for w, rs in ok.items() if rs}
    rows = [[w, f"{m:,.1f}", f"{tokens / m * 1e3:,.0f}",
             f"{max(r['peak_mb'] for r in ok[w]):,.0f}", f"{ok[w][-1]['loss']:.4f}",
             f"{ms['torch'] / m:.3f}" if "torch" in ms else ""] for w, m in ms.items()]
    return common.markdown_table([f"{name} step", "ms/step", "tokens/s", "peak MiB",
                                  "last loss", "PyTorch ms / this"], rows)


if __name__ == "__main__":
    sys.exit(main())
