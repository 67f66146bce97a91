"""python benchmarks/bench_generate.py: sampling speed, ours (with and without the KV cache)
vs nanoGPT's uncached generate in PyTorch eager (CPU), batch 1.

Each run continues a fixed random prompt of --prompt tokens (default 8) by --tokens new
tokens (default 256) with temperature 1.0 and plain sampling:

    ours, cached:    model.generate(idx, 256, temperature=1.0, rng=0), set up as
                     `python -m tinygrad_gpt.sample` sets itself up (OPENBLAS_THREAD_TIMEOUT=4
                     before NumPy loads, tensor.fast.enable())
    ours, uncached:  model.generate(idx, 256, temperature=1.0, rng=0, use_cache=False)
    PyTorch:         nanogpt_reference.GPT.generate (nanoGPT's loop: crop to block_size,
                     run the whole window, sample from the last position)

tokens/s = new tokens / median wall time of --reps runs (after one short warm-up run).
"tokens run" counts the positions pushed through the model per generate call (prompt
prefill, one per cached step, the whole window per uncached step).

Both shapes exercise the crop path: S has block_size 64 and M 256, both < 8 + 256, so
the context window slides. With learned absolute positions, a slid window invalidates every
cached key, so once the window slides our cached loop runs the full window without a cache
(gpt/generate.py): from then on every step is an uncached step.

    python benchmarks/bench_generate.py                      # S and M, 3 reps, 2 threads
    python benchmarks/bench_generate.py --shapes M --json gen.json
    python benchmarks/bench_generate.py --quick              # smoke run, a few seconds
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = {
    "S": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False),
    "M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False),
    "XS": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, bias=True),
}
MODES = ("ours_cached", "ours_uncached", "torch_uncached")
LABELS = {"ours_cached": "ours, KV cache", "ours_uncached": "ours, no cache",
          "torch_uncached": "PyTorch nanoGPT (no cache)"}
SEED = 1337


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_generate.py",
                                description="Generation tokens/s: ours cached/uncached vs nanoGPT.")
    p.add_argument("--shapes", default="S,M", help="comma-separated, from S, M (default both)")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per run (default 256)")
    p.add_argument("--prompt", type=int, default=8, help="prompt length (default 8)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per mode (default 3)")
    p.add_argument("--steps", type=int, dest="reps", help="alias of --reps")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 32 tokens")
    p.add_argument("--no-torch", action="store_true", help="time our model only")
    p.add_argument("--wait-load", type=float, metavar="X",
                   help="before each child, wait (up to --max-wait s) for the 1-minute load "
                        "average to drop below X (the machine is shared)")
    p.add_argument("--max-wait", type=float, default=300, help="seconds (default 300)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.reps = 32, 1
    args.shapes = ["XS"] if args.quick else common.parse_shapes(p, args.shapes, ("S", "M"))
    if args.tokens < 1 or args.prompt < 1 or args.reps < 1 or args.threads < 1:
        p.error("--tokens, --prompt, --reps and --threads must be >= 1")
    return args


def prompt(shape, n):
    import numpy as np
    return np.random.default_rng(SEED).integers(0, shape["vocab_size"], (1, n))


def timed_runs(run, reps):
    run(warmup=True)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run(warmup=False)
        times.append(time.perf_counter() - t0)
    return times


# ----- children --------------------------------------------------------------------------
def child_ours(shape, args, use_cache):
    fast = common.like_the_cli()       # as python -m tinygrad_gpt.sample: before NumPy loads
    import numpy as np
    common.limit_threads(args.threads)
    from gpt import GPT, GPTConfig
    from tensor import manual_seed
    manual_seed(SEED)
    model = GPT(GPTConfig(**common.model_sizes(shape)))
    model.eval()
    counts = {"calls": 0, "positions": 0}
    forward = model.forward

    def counting_forward(idx, *a, **kw):   # instance attribute: Module.__call__ finds it
        counts["calls"] += 1
        counts["positions"] += np.shape(getattr(idx, "data", idx))[1]
        return forward(idx, *a, **kw)
    model.forward = counting_forward
    idx = prompt(shape, args.prompt)
    out = {}

    def run(warmup):
        n = min(16, args.tokens) if warmup else args.tokens
        counts.update(calls=0, positions=0)
        out["ids"] = model.generate(idx, n, temperature=1.0, rng=0, use_cache=use_cache)
        out["counts"] = dict(counts)

    times = timed_runs(run, args.reps)
    assert out["ids"].shape == (1, args.prompt + args.tokens)
    return {"times_s": times, "fast": fast, "forward_calls": out["counts"]["calls"],
            "tokens_run": out["counts"]["positions"], "peak_rss_mb": common.peak_rss_mb(),
            "first_new_ids": out["ids"][0, args.prompt:args.prompt + 8].tolist()}


def child_torch(shape, args):
    import torch
    torch.set_num_threads(args.threads)
    import nanogpt_reference as ref
    torch.manual_seed(SEED)
    model = ref.GPT(ref.GPTConfig(**common.model_sizes(shape)))
    model.eval()
    idx = torch.from_numpy(prompt(shape, args.prompt))
    gen = torch.Generator().manual_seed(0)
    out = {}

    def run(warmup):
        n = min(16, args.tokens) if warmup else args.tokens
        out["ids"] = model.generate(idx, n, temperature=1.0, generator=gen)

    times = timed_runs(run, args.reps)
    T0, block = args.prompt, shape["block_size"]
    tokens_run = sum(min(T0 + i, block) for i in range(args.tokens))
    return {"times_s": times, "forward_calls": args.tokens, "tokens_run": tokens_run,
            "peak_rss_mb": common.peak_rss_mb(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "blas": common.torch_blas(torch)}


# ----- the parent ------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    if args.child:
        common.set_threads(args.threads)
        shape = SHAPES[args.shape]
        if args.child == "torch_uncached":
            result = child_torch(shape, args)
        else:
            result = child_ours(shape, args, use_cache=args.child == "ours_cached")
        common.emit_result(result)
        return 0

    common.set_threads(args.threads)
    import statistics

    import numpy as np
    common.limit_threads(args.threads)
    common.wait_for_load(args.wait_load, args.max_wait)
    load_before = common.load_average()
    modes = [m for m in MODES if not (args.no_torch and m.startswith("torch"))]
    results = {}
    for name in args.shapes:
        results[name] = {}
        for mode in modes:
            argv = [os.path.abspath(__file__), "--child", mode, "--shape", name,
                    "--tokens", str(args.tokens), "--prompt", str(args.prompt),
                    "--reps", str(args.reps), "--threads", str(args.threads)]
            load = common.wait_for_load(args.wait_load, args.max_wait)
            ticks = common.cpu_ticks()
            env = common.thread_env(args.threads) if mode.startswith("torch") else \
                common.ours_env(args.threads)
            r = common.run_child(argv, env)
            r["load_at_start"] = load
            r["steal_pct"] = common.steal_percent(ticks, common.cpu_ticks())
            if "times_s" in r:
                r["median_s"] = statistics.median(r["times_s"])
                r["tokens_per_s"] = args.tokens / r["median_s"]
            results[name][mode] = r
    load_after = common.load_average()
    meta = {**common.machine_info(), "threads": args.threads, "numpy": np.__version__,
            "numpy_blas": common.blas_info(np), "tokens": args.tokens, "prompt": args.prompt,
            "reps": args.reps, "load_before": load_before, "load_after": load_after}

    print(f"# Generation: {args.tokens} new tokens from a {args.prompt}-token prompt, batch 1, "
          f"{args.threads} thread(s)\n")
    print(f"machine: {meta['cpu']}, nproc {meta['nproc']}; python {meta['python']}; "
          f"code at {meta['git']}")
    print(f"numpy {meta['numpy']}, BLAS: {meta['numpy_blas']}")
    torch_r = next((r for per in results.values() for m, r in per.items()
                    if m.startswith("torch") and "torch" in r), None)
    if torch_r:
        print(f"torch {torch_r['torch']} eager, {torch_r['torch_threads']} threads, "
              f"BLAS: {torch_r['blas']}")
    print(f"load average before: {load_before}; after: {load_after}")
    print(f"median of {args.reps} runs after a 16-token warm-up run\n")
    rows = []
    for name, per in results.items():
        shape = SHAPES[name]
        crop = args.prompt + args.tokens > shape["block_size"]
        cached = per.get("ours_cached", {}).get("median_s")
        for mode, r in per.items():
            if "error" in r:
                rows.append([name, LABELS[mode]] + ["error"] * 8)
                print(f"{name} {mode}: {r['error']}", file=sys.stderr)
                continue
            speedup = "-" if cached is None else f"{r['median_s'] / cached:.2f}"
            rows.append([name, LABELS[mode], common.fmt(r["median_s"] * 1e3, 0),
                         common.fmt(r["tokens_per_s"], 1), speedup,
                         f"{r['forward_calls']} / {r['tokens_run']:,}",
                         common.fmt(r["peak_rss_mb"], 0),
                         f"yes (block {shape['block_size']})" if crop else "no",
                         f"{r['load_at_start']:.2f}", common.fmt(r.get("steal_pct"), 0)])
    print(common.markdown_table(
        ["shape", "mode", "ms / run", "tokens/s", "time / cached time",
         "forward calls / tokens run", "peak RSS MiB", "crop path", "load at start",
         "host steal %"], rows))
    print("\ntime / cached time = this row's median / ours-with-KV-cache median "
          "(> 1: slower than cached)")
    common.write_json(args.json, {"meta": meta, "shapes": {k: SHAPES[k] for k in args.shapes},
                                  "results": results})
    return 1 if any("error" in r for per in results.values() for r in per.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
