"""Fine-tuning steps at GPT-2 small's shape: full, last block only, LoRA; ours and PyTorch's.

    python benchmarks/bench_finetune.py                     # 2 rounds x 4 steps per child
    python benchmarks/bench_finetune.py --rounds 3 --steps 6 --json out.json
    python benchmarks/bench_finetune.py --quick             # smoke run, a tiny model
    python benchmarks/bench_finetune.py --gemm --kinds ours-last_block,torch-last_block

One step = zero_grad, forward, the language-model loss, backward, clipping, AdamW over the
trainable parameters: what `train --init_from` (full), `--lora_rank 8` (LoRA on attn+mlp)
and a last-block fine-tune (the last block and the final layer norm trainable, as
`finetune classify --trainable last_block` trains the body) do per step. Random weights
(timing does not depend on them), batch 2 x 256 tokens, vocab 50257. PyTorch runs nanoGPT's
model (benchmarks/nanogpt_reference.py) with the same parameters frozen by
requires_grad_(False). Each child is a fresh process; the kinds take turns, the order
flipping every round; medians of the pooled step times, peak RSS of the child.

"Work skipped" is the share of the full step's matrix-product FLOPs a mode does not need:
a full step is forward F plus backward 2F (dx and dW of every product); last-block keeps
forward F, the LM head's dx (its dW belongs to the frozen embedding) and the last block's
dx and dW; LoRA keeps F and every dx, dropping every frozen dW (the adapters' products are
r/C of that). A frozen mode should be faster than full by at least about that share.

--gemm splits each step into its Linear products and the rest: after the timed steps the
child profiles two more (cProfile over ours, counting tensor/linear.py and tensor/lora.py;
torch.profiler over PyTorch's, counting aten::mm and aten::addmm, the products of its
Linears; attention's products are in "rest" on both sides). A product is one long call, so
the profilers' overhead hardly touches it; "rest" is the unprofiled median minus it.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch=2, vocab_size=50257,
             bias=True)
QUICK = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch=2, vocab_size=65, bias=True)
KINDS = ("ours-full", "ours-last_block", "ours-lora", "torch-full", "torch-last_block")
LR, BETAS, WEIGHT_DECAY, CLIP, RANK, ALPHA, SEED = 3e-5, (0.9, 0.99), 0.1, 1.0, 8, 16.0, 1337


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="children per kind (default 2)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per child (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per child")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, from " +
                   ", ".join(KINDS))
    p.add_argument("--quick", action="store_true", help="a tiny model, 1 round, 2 steps")
    p.add_argument("--gemm", action="store_true",
                   help="also split each step into Linear products and the rest")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 2, 1
    args.kinds = args.kinds.split(",")
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown --kinds {unknown}: choose from {', '.join(KINDS)}")
    return args


def batch(shape):
    import numpy as np
    rng = np.random.default_rng(SEED)
    size = (shape["batch"], shape["block_size"])
    return rng.integers(0, shape["vocab_size"], size), rng.integers(0, shape["vocab_size"], size)


def work_skipped(shape, mode):
    """The share of a full step's matrix-product FLOPs that `mode` skips (see the docstring)."""
    C, T, L, V = shape["n_embd"], shape["block_size"], shape["n_layer"], shape["vocab_size"]
    layer = 12 * C * C + 2 * T * C           # per token: the 4 + 8 C^2 products, attention's 2
    head = V * C
    forward = L * layer + head
    full = 3 * forward
    kept = {"full": full, "last_block": forward + head + 2 * layer,
            "lora": forward + (L * layer + head)}[mode]
    return 1.0 - kept / full


def child_ours(mode, shape, args):
    common.like_the_cli(True)
    import nn
    from gpt import GPT, GPTConfig
    from tensor import manual_seed
    common.limit_threads(args.threads)
    manual_seed(SEED)
    model = GPT(GPTConfig(**common.model_sizes(shape)))
    if mode == "last_block":
        model.freeze()
        model.unfreeze(f"blocks.{shape['n_layer'] - 1}", "ln_final")
    elif mode == "lora":
        nn.apply_lora(model, RANK, ALPHA, ("attn", "mlp"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = nn.AdamW(nn.decay_groups(params, WEIGHT_DECAY), lr=LR, betas=BETAS)
    x, y = batch(shape)

    def step():
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        nn.clip_grad_norm(params, CLIP)
        opt.step()
    timing = common.timed_steps(step, args.steps, args.warmup)
    if args.gemm:
        timing["gemm_ms"] = gemm_ms_ours(step)
    return {**timing, "trainable": sum(p.size for p in params),
            "optimizer_state_mb": sum(a.nbytes for s in opt.state.values()
                                      for a in s.values()) / 2**20,
            "peak_rss_mb": common.peak_rss_mb()}


def child_torch(mode, shape, args):
    import torch
    import nanogpt_reference as ref
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = ref.GPT(ref.GPTConfig(**common.model_sizes(shape), flash=True))
    model.train()
    if mode == "last_block":
        model.requires_grad_(False)
        model.transformer.h[-1].requires_grad_(True)
        model.transformer.ln_f.requires_grad_(True)
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = (torch.from_numpy(a) for a in batch(shape))

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
    timing = common.timed_steps(step, args.steps, args.warmup)
    if args.gemm:
        timing["gemm_ms"] = gemm_ms_torch(step)
    return {**timing, "trainable": sum(p.numel() for p in params),
            "optimizer_state_mb": sum(v.numel() * v.element_size() for s in opt.state.values()
                                      for v in s.values() if torch.is_tensor(v)) / 2**20,
            "peak_rss_mb": common.peak_rss_mb()}


def gemm_ms_ours(step, steps=2):
    """ms per step spent in our Linear products (forward and backward), from cProfile."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.runcall(lambda: [step() for _ in range(steps)])
    stats = pstats.Stats(prof).stats          # {(file, line, name): (cc, nc, tottime, ...)}
    linear_files = (os.path.join("tensor", "linear.py"), os.path.join("tensor", "lora.py"))
    return 1e3 * sum(v[2] for (f, _, _), v in stats.items()
                     if f.endswith(linear_files)) / steps


def gemm_ms_torch(step, steps=2):
    """ms per step spent in PyTorch's aten::mm and aten::addmm, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages()
               if e.key in ("aten::mm", "aten::addmm")) / 1e3 / steps


def run_child(kind, args):
    argv = [os.path.abspath(__file__), "--child", kind, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(args.threads)] + \
        (["--quick"] if args.quick else []) + (["--gemm"] if args.gemm else [])
    env = common.thread_env(args.threads) if kind.startswith("torch") else \
        common.ours_env(args.threads)
    result = common.run_child(argv, env)
    result["load_at_start"] = common.load_average()[0]
    return result


def main(argv=None):
    args = parse_args(argv)
    shape = QUICK if args.quick else SHAPE
    if args.child:
        framework, mode = args.child.split("-", 1)
        common.set_threads(args.threads)
        fn = child_torch if framework == "torch" else child_ours
        common.emit_result(fn(mode, shape, args))
        return 0
    print(f"# fine-tuning steps, {shape}; {args.rounds} round(s) x {args.steps} steps; "
          f"load average {common.load_average()}")
    runs = {kind: [] for kind in args.kinds}
    for r in range(args.rounds):
        for kind in (args.kinds if r % 2 == 0 else args.kinds[::-1]):
            result = run_child(kind, args)
            runs[kind].append(result)
            print(f"  round {r + 1} {kind}: " + (result.get("error") or
                  f"{result['median_s'] * 1e3:.1f} ms/step, RSS {result['peak_rss_mb']:.0f} MiB"),
                  flush=True)
    summary = {}
    for kind, children in runs.items():
        ok = [c for c in children if "error" not in c]
        if ok:
            summary[kind] = {"median_ms": 1e3 * statistics.median(t for c in ok
                                                                     for t in c["times_s"]),
                             "peak_rss_mb": max(c["peak_rss_mb"] for c in ok),
                             "trainable": ok[0]["trainable"],
                             "optimizer_state_mb": ok[0]["optimizer_state_mb"]}
            if args.gemm:
                gemm = statistics.median(c["gemm_ms"] for c in ok)
                summary[kind].update(gemm_ms=gemm, rest_ms=summary[kind]["median_ms"] - gemm)
    rows = []
    for kind, s in summary.items():
        framework, mode = kind.split("-", 1)
        full = summary.get(f"{framework}-full")
        ratio = s["median_ms"] / full["median_ms"] if full else None
        theirs = summary.get(f"torch-{mode}")
        rows.append([kind, f"{s['median_ms']:,.0f}", common.fmt(ratio, 3),
                     f"{1 - work_skipped(shape, mode):.3f}",
                     common.fmt(theirs["median_ms"] / s["median_ms"], 3)
                     if theirs and framework == "ours" else "-",
                     f"{s['trainable']:,}", f"{s['optimizer_state_mb']:,.1f}",
                     f"{s['peak_rss_mb']:,.0f}"] +
                    ([f"{s['gemm_ms']:,.0f}", f"{s['rest_ms']:,.0f}"] if args.gemm else []))
    print()
    print(common.markdown_table(["kind", "ms/step", "/ full", "FLOP share kept", "PyTorch / ours",
                                 "trainable", "AdamW state MiB", "peak RSS MiB"] +
                                (["Linear products ms", "rest ms"] if args.gemm else []), rows))
    print(f"\nload average at the end: {common.load_average()}")
    if args.json:
        common.write_json(args.json, {"shape": shape, "runs": runs, "summary": summary,
                                      "machine": common.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
