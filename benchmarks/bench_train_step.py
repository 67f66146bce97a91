"""python benchmarks/bench_train_step.py: one GPT training step, ours vs PyTorch eager (CPU).

A step is nanoGPT's training-loop body: zero the gradients, forward with targets (logits
and the mean cross-entropy), backward, clip the global gradient norm to 1.0, AdamW step
(weight decay 0.1 on 2-D+ parameters only, betas (0.9, 0.99)). float32, dropout 0, the same
fixed random batch every step (data loading is not timed).

    ours:    what `python -m tinygrad_gpt.train` runs: OPENBLAS_THREAD_TIMEOUT=4 before NumPy
             loads, tensor.fast.enable(), from gpt import GPT, GPTConfig;
             nn.AdamW(nn.decay_groups(params, 0.1), ...); the CLI's step function
             (tinygrad_gpt.train.step) around nn.forward_backward, or nn.DataParallel's (the
             batch's two halves on the two cores at once) where the CLI's --parallel auto uses
             it (S and M; not L, where the twin's gradients would cost 500 MB),
             --ours-parallel on/off to force
    reference (--reference): the same step with the fast layer off (tensor.fast not
             enabled: every op runs its reference code in tensor/, as with
             TINYGRAD_GPT_FAST=0), taking turns with the others: the cost of readability
    PyTorch: benchmarks/nanogpt_reference.py (nanoGPT's model, with torch's fused
             scaled_dot_product_attention as nanoGPT runs it on torch 2; --torch-attn mask
             for its explicit-mask path) with torch.optim.AdamW, same thread count

Shapes (--shapes):
    S  nanoGPT's CPU Shakespeare config: 4 layers, 4 heads, 128 wide, block 64, batch 12,
       vocab 65, bias False
    M  6 layers, 6 heads, 384 wide, block 256, batch 4, vocab 65, bias False
    L  GPT-2 small: 12 layers, 12 heads, 768 wide, vocab 50304, block 256, batch 2, bias True

Numbers per shape and framework: median ms/step over --steps timed steps after --warmup
untimed ones; tokens/s = B*T / median; achieved GFLOP/s with nanoGPT's (PaLM's) estimate

    flops_per_token = 6 N + 12 n_layer n_head head_size T    (= 6 N + 12 n_layer C T)
    N = every parameter except the position embedding (the token embedding counts once:
        it is also the LM head, V*C); the 12 L C T term is attention's QK^T and AV,
        forward + backward, over the full T x T square (our attention skips the part above
        the diagonal, and torch's fused kernel may: both are credited the same FLOPs)

and that as a fraction of the machine's float32 matmul peak, measured in this same run
with np.matmul on 2048 x 2048 matrices (best of 10, before and after, and the peaks each
child measures around its own steps; the highest is used), and as a fraction of the child's
own adjacent peak (see timed_with_peak).
Each (shape, framework) runs in its own subprocesses, so the peak RSS (getrusage) is that
framework's at that shape alone: --rounds children each (default 3), ours and PyTorch taking
turns, the order flipping every round, and --steps timed steps (default 12) shared among
them; the median is over all of a framework's steps. Taking turns matters on these shared
2-core machines, whose speed drifts by 1.5x within minutes: a slow spell then falls on
both frameworks instead of on whichever ran during it. The thread count is fixed in every
child (BLAS/OpenMP environment variables for NumPy, torch.set_num_threads for PyTorch).
Every child also records the host's steal over its steps (common.cpu_ticks: CPU time this
virtual machine wanted but the host gave to other guests); --max-steal reruns a child that
was disturbed more than that, keeping the least-disturbed try.

    python benchmarks/bench_train_step.py                       # S, M, L; 12 steps; 2 threads
    python benchmarks/bench_train_step.py --shapes S,M --steps 30 --rounds 5 --json train.json
    python benchmarks/bench_train_step.py --shapes S,M --reference --no-torch   # fast vs reference
    python benchmarks/bench_train_step.py --quick               # smoke run, a few seconds
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = {
    "S": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab_size=65,
              bias=False),
    "M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=4, vocab_size=65,
              bias=False),
    "L": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch=2, vocab_size=50304,
              bias=True),
    # --quick only: a tiny model so the smoke run takes seconds
    "XS": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch=2, vocab_size=65,
               bias=True),
}
LR, BETAS, WEIGHT_DECAY, CLIP = 6e-4, (0.9, 0.99), 0.1, 1.0
SEED = 1337


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_train_step.py",
                                description="GPT train step: ours vs nanoGPT in PyTorch "
                                            "eager (CPU).")
    p.add_argument("--shapes", default="S,M,L", help="comma-separated, from S, M, L (default all)")
    p.add_argument("--steps", type=int, default=12,
                   help="timed steps per framework and shape, over all rounds (default 12)")
    p.add_argument("--rounds", type=int, default=3,
                   help="children per framework and shape, ours and PyTorch taking turns "
                        "(default 3)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps at the start of every child (default 2)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shape, 2 steps")
    p.add_argument("--no-torch", action="store_true", help="time our model only")
    p.add_argument("--reference", action="store_true",
                   help="also time our step with the fast layer off (tensor.fast not "
                        "enabled: the reference ops), taking turns with the others")
    p.add_argument("--torch-attn", choices=("mask", "sdpa"), default="sdpa",
                   help="reference attention: torch's fused scaled_dot_product_attention "
                        "(nanoGPT's flash path on torch 2, the default), or nanoGPT's "
                        "explicit causal-mask path over the whole T x T square")
    p.add_argument("--ours-parallel", choices=("auto", "on", "off"), default="auto",
                   help="our step with nn.DataParallel (each batch's halves on the two cores "
                        "at once): as the training CLI's --parallel (default auto: on for "
                        "models up to nn.parallel.AUTO_MAX_PARAMETERS, here S and M)")
    p.add_argument("--wait-load", type=float, metavar="X",
                   help="before each child, wait (up to --max-wait s) for the 1-minute load "
                        "average to drop below X (the machine is shared)")
    p.add_argument("--max-wait", type=float, default=300, help="seconds (default 300)")
    p.add_argument("--max-steal", type=float, metavar="PCT",
                   help="run a child again (see --retries) when the host stole more than PCT "
                        "percent of the CPU time during its timed steps; the least-disturbed "
                        "try is kept")
    p.add_argument("--retries", type=int, default=2, help="with --max-steal (default 2)")
    p.add_argument("--child", choices=("ours", "reference", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 2, 1, 2
    args.shapes = ["XS"] if args.quick else common.parse_shapes(p, args.shapes, ("S", "M", "L"))
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--steps, --rounds and --threads must be >= 1, --warmup >= 0")
    args.rounds = min(args.rounds, args.steps)
    return args


def flops_per_token(n_params, shape):
    """nanoGPT's estimate_mfu: 6 N + 12 L H Q T (H Q = C)."""
    return 6 * n_params + 12 * shape["n_layer"] * shape["n_embd"] * shape["block_size"]


def batch(shape):
    import numpy as np
    rng = np.random.default_rng(SEED)
    B, T, V = shape["batch"], shape["block_size"], shape["vocab_size"]
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ----- children: one framework at one shape, in its own process -------------------------
def timed_with_peak(step, args):
    """The child's timed steps, with np.matmul's peak measured right before and right after
    them (best of 5 each): the 'adjacent' peak that this child's GFLOP/s is divided by."""
    n = 512 if args.quick else 2048
    before = common.matmul_peak_gflops(n, reps=5)
    timing = common.timed_steps(step, args.steps, args.warmup)
    after = common.matmul_peak_gflops(n, reps=5)
    return {**timing, "adjacent_peak_gflops": max(before, after)}


def build_ours(shape, ours_parallel="auto"):
    """Our model, optimizer and training step at this shape: (step, model, losses, parallel),
    parallel True when the step runs through nn.DataParallel. The step is the body of the
    training CLI's tinygrad_gpt.train.step (one micro-batch: zero_grad, forward + backward,
    clip, AdamW), its forward_backward chosen as the CLI chooses it (--parallel,
    nn.parallel.worth_it). Written out, not imported: the CLI module's own imports (tqdm,
    safetensors, ~9 MiB) would count in this child's peak RSS, which measures the step's
    (tests/test_benchmarks.py checks that it equals train.step)."""
    import functools

    import nn
    from gpt import GPT, GPTConfig
    from tensor import manual_seed
    manual_seed(SEED)
    model = GPT(GPTConfig(**common.model_sizes(shape)))
    opt = nn.AdamW(nn.decay_groups(model.parameters(), WEIGHT_DECAY), lr=LR, betas=BETAS)
    x, y = batch(shape)
    losses = []
    parallel = ours_parallel == "on" or (ours_parallel == "auto"
                                         and nn.parallel.worth_it(model))
    forward_backward = nn.DataParallel(model).forward_backward if parallel \
        else functools.partial(nn.forward_backward, model)

    def step():                          # = train.step(model, opt, forward_backward, x, y,
        for group in opt.param_groups:   #              LR, TrainConfig(grad_clip=CLIP))
            group["lr"] = LR
        opt.zero_grad()
        loss = forward_backward(x, y, 1.0)
        nn.clip_grad_norm(model.parameters(), CLIP)
        opt.step()
        losses.append(loss)
    return step, model, losses, parallel


def child_ours(shape, args, fast=True):
    """Our step in this process, set up as the training CLI sets itself up (fast=False:
    the fast layer off, every op's reference code)."""
    fast = common.like_the_cli(fast)           # before NumPy is imported
    import numpy as np
    common.limit_threads(args.threads)
    step, model, losses, parallel = build_ours(shape, args.ours_parallel)
    timing = timed_with_peak(step, args)
    return {"n_params": int(model.num_parameters(non_embedding=True)), **timing,
            "parallel": parallel, "fast": fast,
            "losses": losses, "peak_rss_mb": common.peak_rss_mb(),
            "blas": common.blas_info(np), "numpy": np.__version__}


def build_torch(shape, torch_attn="sdpa"):
    """nanoGPT's model in PyTorch, its optimizer and training step: (step, model, losses)."""
    import torch
    import nanogpt_reference as ref
    torch.manual_seed(SEED)
    config = ref.GPTConfig(**common.model_sizes(shape),
                           flash=torch_attn == "sdpa")
    model = ref.GPT(config)
    model.train()
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")
    x, y = (torch.from_numpy(a) for a in batch(shape))
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(float(loss.item()))
    return step, model, losses


def child_torch(shape, args):
    import torch
    torch.set_num_threads(args.threads)
    step, model, losses = build_torch(shape, args.torch_attn)
    timing = timed_with_peak(step, args)
    return {"n_params": int(model.get_num_params()), **timing, "losses": losses,
            "peak_rss_mb": common.peak_rss_mb(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "blas": common.torch_blas(torch)}


# ----- the parent: peak, children, tables ------------------------------------------------
def run_child(kind, name, args, steps):
    argv = [os.path.abspath(__file__), "--child", kind, "--shape", name,
            "--steps", str(steps), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--torch-attn", args.torch_attn,
            "--ours-parallel", args.ours_parallel]
    tries = []
    for _ in range(1 + (args.retries if args.max_steal is not None else 0)):
        load = common.wait_for_load(args.wait_load, args.max_wait)
        env = common.thread_env(args.threads) if kind == "torch" else \
            common.ours_env(args.threads)
        result = common.run_child(argv, env)
        result["load_at_start"] = load
        tries.append(result)
        steal = result.get("steal_pct")
        if args.max_steal is None or steal is None or steal <= args.max_steal:
            break
    # with --max-steal: the try the host disturbed least; the others stay in the JSON
    best = min(tries, key=lambda r: r.get("steal_pct") or 0.0)
    best["discarded_tries_steal_pct"] = [r.get("steal_pct") for r in tries if r is not best]
    return best


def run_rounds(name, kinds, args):
    """Ours and PyTorch take turns, `rounds` children each (the order flips every round),
    so a slow spell of this shared machine lands on both; step times are pooled."""
    per_round = [len(r) for r in _split(args.steps, args.rounds)]
    runs = {kind: [] for kind in kinds}
    for r, steps in enumerate(per_round):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            runs[kind].append(run_child(kind, name, args, steps))
    return {kind: merge_runs(children, SHAPES[name]) for kind, children in runs.items()}


def _split(n, parts):
    return [range(i, n, parts) for i in range(parts)]


def merge_runs(children, shape):
    """One result from a framework's children: pooled step times, the highest peak RSS."""
    errors = [c for c in children if "error" in c]
    if errors:
        return errors[0]
    result = dict(children[0])
    result["times_s"] = [t for c in children for t in c["times_s"]]
    result["median_s"] = statistics.median(result["times_s"])
    result["round_medians_s"] = [c["median_s"] for c in children]
    result["peak_rss_mb"] = max(c["peak_rss_mb"] for c in children)
    result["load_at_start"] = max(c["load_at_start"] for c in children)
    steals = [c["steal_pct"] for c in children if c.get("steal_pct") is not None]
    result["steal_pct"] = max(steals) if steals else None        # the worst child's
    result["round_steal_pct"] = [c.get("steal_pct") for c in children]
    result["round_adjacent_peak_gflops"] = [c["adjacent_peak_gflops"] for c in children]
    result["discarded_tries_steal_pct"] = [c.get("discarded_tries_steal_pct", [])
                                           for c in children]      # per child (--max-steal)
    tokens = shape["batch"] * shape["block_size"]
    fpt = flops_per_token(result["n_params"], shape)
    result["tokens_per_s"] = tokens / result["median_s"]
    result["flops_per_token"] = fpt
    result["gflops"] = fpt * tokens / result["median_s"] / 1e9
    # each child's GFLOP/s over the peak measured around its own steps, then the median
    result["round_fraction_of_adjacent_peak"] = [
        fpt * tokens / c["median_s"] / 1e9 / c["adjacent_peak_gflops"] for c in children]
    result["fraction_of_adjacent_peak"] = statistics.median(
        result["round_fraction_of_adjacent_peak"])
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        common.set_threads(args.threads)
        shape = SHAPES[args.shape]
        common.emit_result(child_torch(shape, args) if args.child == "torch" else
                           child_ours(shape, args, fast=args.child == "ours"))
        return 0

    common.set_threads(args.threads)
    import numpy as np
    common.limit_threads(args.threads)
    common.wait_for_load(args.wait_load, args.max_wait)
    load_before = common.load_average()
    peak_n = 512 if args.quick else 2048
    peak_before = common.matmul_peak_gflops(peak_n)
    kinds = ["ours"] + (["reference"] if args.reference else []) + \
        ([] if args.no_torch else ["torch"])
    results = {}
    for name in args.shapes:
        results[name] = run_rounds(name, kinds, args)
    common.wait_for_load(args.wait_load, args.max_wait)
    peak_after = common.matmul_peak_gflops(peak_n)
    adjacent = [c for per in results.values() for r in per.values()   # children's own peaks
                for c in r.get("round_adjacent_peak_gflops", [])]
    peak = max([peak_before, peak_after] + adjacent)
    load_after = common.load_average()
    for per_kind in results.values():
        for r in per_kind.values():
            if "gflops" in r:
                r["fraction_of_peak"] = r["gflops"] / peak

    meta = {**common.machine_info(), "threads": args.threads, "numpy": np.__version__,
            "numpy_blas": common.blas_info(np), "steps": args.steps, "rounds": args.rounds,
            "warmup": args.warmup, "kinds": kinds,
            "torch_attn": args.torch_attn, "load_before": load_before, "load_after": load_after,
            "matmul_peak_gflops": peak, "matmul_peak_before": peak_before,
            "matmul_peak_after": peak_after, "matmul_peak_n": peak_n}
    torch_meta = next((r for per in results.values() for k, r in per.items()
                       if k == "torch" and "error" not in r), None)
    print(f"# Train step: ours vs PyTorch eager, {args.threads} thread(s)\n")
    print(f"machine: {meta['cpu']}, nproc {meta['nproc']}; python {meta['python']}; "
          f"code at {meta['git']}")
    print(f"numpy {meta['numpy']}, BLAS: {meta['numpy_blas']}")
    if torch_meta:
        print(f"torch {torch_meta['torch']} eager, {torch_meta['torch_threads']} threads, "
              f"BLAS: {torch_meta['blas']}, attention: {args.torch_attn}")
    print(f"float32 matmul peak (np.matmul {peak_n}^2, best of 10): {peak:.1f} GFLOP/s "
          f"(before {peak_before:.1f}, after {peak_after:.1f}; around the children's steps "
          f"{min(adjacent, default=0):.1f} to {max(adjacent, default=0):.1f})")
    print(f"load average before: {load_before}; after: {load_after}")
    print(f"median of {args.steps} steps per framework and shape, from {args.rounds} children "
          f"each ({', '.join(kinds)} taking turns), {args.warmup} warm-up steps per child; "
          "flops/token = 6 N + 12 n_layer C T\n")

    rows = []
    for name, per_kind in results.items():
        for kind, r in per_kind.items():
            label = "PyTorch eager" if kind == "torch" else \
                ("ours" if kind == "ours" else "ours, reference ops") + \
                (" (NumPy, 2 halves)" if r.get("parallel") else " (NumPy)")
            if "error" in r:
                rows.append([name, label] + ["error"] * 8)
                print(f"{name} {kind}: {r['error']}", file=sys.stderr)
                continue
            steal = r.get("steal_pct")
            rows.append([name, label, common.fmt(r["median_s"] * 1e3, 1),
                         common.fmt(min(r["times_s"]) * 1e3, 1),
                         common.fmt(r["tokens_per_s"], 0), common.fmt(r["gflops"], 1),
                         common.fmt(100 * r["fraction_of_adjacent_peak"], 1),
                         common.fmt(100 * r["fraction_of_peak"], 1),
                         common.fmt(r["peak_rss_mb"], 0), f"{r['n_params'] / 1e6:.2f}M",
                         f"{r['load_at_start']:.2f}", common.fmt(steal, 0)])
    print(common.markdown_table(
        ["shape", "framework", "ms/step (median)", "ms/step (min)", "tokens/s", "GFLOP/s",
         "% of adjacent peak", "% of best peak", "peak RSS MiB", "N", "max load at start",
         "max steal %"], rows))
    print("\n% of adjacent peak: each child's GFLOP/s over np.matmul's peak measured just "
          "before and after its own steps (median over children); % of best peak: over the "
          "best peak of this run. steal: CPU time the host gave to other guests while the "
          "steps ran (the worst child's).")

    ratio_rows = []
    for name, per_kind in results.items():
        ours, ref = per_kind.get("ours", {}), per_kind.get("torch", {})
        if "median_s" in ours and "median_s" in ref:
            ratio = ref["median_s"] / ours["median_s"]
            ours["torch_over_ours"] = ratio
            # the same ratio with each side's time scaled by its own adjacent peak
            adjusted = ours["fraction_of_adjacent_peak"] / ref["fraction_of_adjacent_peak"]
            ours["torch_over_ours_peak_adjusted"] = adjusted
            ratio_rows.append([name, common.fmt(ours["median_s"] * 1e3, 1),
                               common.fmt(ref["median_s"] * 1e3, 1), f"{ratio:.2f}",
                               f"{adjusted:.2f}"])
    if ratio_rows:
        print("\nratio = PyTorch ms / ours ms (> 1: ours is faster); peak-adjusted = ours % of "
              "adjacent peak / PyTorch's (the ratio with the machine's drift between the "
              "children divided out)\n")
        print(common.markdown_table(["shape", "ours ms", "PyTorch ms", "ratio",
                                     "peak-adjusted ratio"], ratio_rows))
    cost_rows = []                # --reference: the fast layer's gain, in the same run
    for name, per_kind in results.items():
        ours, plain = per_kind.get("ours", {}), per_kind.get("reference", {})
        if "median_s" in ours and "median_s" in plain:
            ours["reference_over_ours"] = plain["median_s"] / ours["median_s"]
            cost_rows.append([name, common.fmt(ours["median_s"] * 1e3, 1),
                              common.fmt(plain["median_s"] * 1e3, 1),
                              f"{ours['reference_over_ours']:.2f}",
                              common.fmt(ours["peak_rss_mb"], 0),
                              common.fmt(plain["peak_rss_mb"], 0)])
    if cost_rows:
        print("\nreference = our step with the fast layer off (tensor/'s reference ops); "
              "ratio = reference ms / ours ms (> 1: the fast layer pays)\n")
        print(common.markdown_table(["shape", "ours ms", "reference ms", "ratio",
                                     "ours RSS MiB", "reference RSS MiB"], cost_rows))

    for name, per_kind in results.items():
        for kind, r in per_kind.items():
            if "losses" in r:
                print(f"\n{name} {kind}: loss first {r['losses'][0]:.4f} "
                      f"last {r['losses'][-1]:.4f}",
                      end="")
    print()
    common.write_json(args.json, {"meta": meta, "shapes": {k: SHAPES[k] for k in args.shapes},
                                  "results": results})
    return 1 if any("error" in r for per in results.values() for r in per.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
