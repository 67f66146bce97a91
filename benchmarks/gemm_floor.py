"""python benchmarks/gemm_floor.py: how fast could our train step be, with NumPy's BLAS?

Every Linear of a training step is three matrix products (tensor/linear.py), N = B*T rows:

    forward   y  = x @ W^T       (N, in) @ (in, out)
    backward  dx = dy @ W        (N, out) @ (out, in)
              dW = dy^T @ x      (out, N) @ (N, in)

This script times exactly those products, in the layouts our engine uses, for every Linear
of our GPT at shape S, M or L (bench_train_step.py's shapes), the LM head (tied to the token
embedding) included. Their sum is a FLOOR under our step: attention's products, every
elementwise op, cross-entropy, clipping and AdamW all come on top of it. In the same run it
times the same products with PyTorch's BLAS and PyTorch's whole nanoGPT train step
(benchmarks/nanogpt_reference.py, as bench_train_step.py runs it). So

    best reachable ratio = PyTorch's step / our floor

and a target ratio above that cannot be met with this BLAS on this machine, however fast
everything else in the engine becomes.

Our floor is taken two ways, and the lower one counts:
    2 threads   each product on the whole batch, OpenBLAS on both cores (our step at L)
    2 halves    as nn.DataParallel runs them (S and M): the first half of the rows on this
                thread and the second on a helper at once, OpenBLAS at one thread each

Each framework runs in its own child process, --rounds children each, taking turns (a slow
spell of the shared machine falls on both); inside a child the variants alternate pass by
pass, so their ratio is taken over the same minutes. Steal (CPU time the host gave other
guests) is reported per child.

    python benchmarks/gemm_floor.py                  # S, M, L; 2 threads
    python benchmarks/gemm_floor.py --shapes M --passes 30 --json floor.json
    python benchmarks/gemm_floor.py --quick          # smoke run, a few seconds
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_train_step import SEED, SHAPES, build_ours, build_torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/gemm_floor.py",
                                description="Our train step's GEMMs alone vs PyTorch's step.")
    p.add_argument("--shapes", default="S,M,L", help="comma-separated, from S, M, L")
    p.add_argument("--passes", type=int, default=12,
                   help="timed passes per variant and child (default 12)")
    p.add_argument("--rounds", type=int, default=3,
                   help="children per framework, taking turns (default 3)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shape, 2 passes")
    p.add_argument("--no-torch", action="store_true", help="our floor only")
    p.add_argument("--child", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.passes, args.rounds = 2, 1
    args.shapes = ["XS"] if args.quick else common.parse_shapes(p, args.shapes, ("S", "M", "L"))
    if args.passes < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--passes, --rounds and --threads must be >= 1")
    return args


def linear_shapes(shape):
    """(in, out) of every product-making Linear in our GPT at this shape, in model order,
    read off the model itself (so a change to gpt/ changes the list), plus the LM head."""
    from gpt import GPT, GPTConfig
    from nn import Linear
    config = GPTConfig(**common.model_sizes(shape))
    model = GPT(config)
    pairs = [m.weight.shape[::-1] for m in model.modules() if isinstance(m, Linear)]
    V, C = model.token_embedding.weight.shape
    return pairs + [(C, V)]                  # logits = x @ wte^T (tensor/linear.py)


def products(xp_matmul, rand, N, pairs):
    """Closures, one per product of a step's Linears at N rows: forward, dx, dW."""
    calls = []
    for n_in, n_out in pairs:
        x, W, dy = rand((N, n_in)), rand((n_out, n_in)), rand((N, n_out))
        dW = rand((n_out, n_in))
        calls += [lambda x=x, W=W: xp_matmul(x, W.T),              # y = x @ W^T
                  lambda dy=dy, W=W: xp_matmul(dy, W),             # dx = dy @ W
                  lambda dy=dy, x=x, dW=dW: xp_matmul(dy.T, x, out=dW)]   # dW = dy^T @ x
    return calls


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(variants, passes):
    """Run the variants in turn, `passes` times each after one warm-up pass: median seconds
    per variant, and the steal over all of it."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    ticks = common.cpu_ticks()
    for _ in range(passes):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {"median_s": {k: statistics.median(v) for k, v in times.items()},
            "steal_pct": common.steal_percent(ticks, common.cpu_ticks())}


def child_numpy(shape, args):
    common.like_the_cli()          # before NumPy loads, as python -m tinygrad_gpt.train
    import numpy as np
    common.limit_threads(args.threads)
    from tensor.fast import threads
    rng = np.random.default_rng(SEED)

    def rand(s):
        return rng.standard_normal(s, dtype=np.float32)
    N = shape["batch"] * shape["block_size"]
    pairs = linear_shapes(shape)
    whole = products(np.matmul, rand, N, pairs)
    first = products(np.matmul, rand, N // 2, pairs)
    second = products(np.matmul, rand, N - N // 2, pairs)

    def run_all(calls):
        for call in calls:
            call()
    variants = {"2 threads": lambda: run_all(whole)}
    if threads.can_run_pair():           # nn.DataParallel's way (tensor/fast/threads.py)
        variants["2 halves"] = lambda: threads.run_pair(lambda: run_all(first),
                                                        lambda: run_all(second))
    variants["ours step"], _, _, parallel = build_ours(shape)   # bench_train_step's step
    result = alternate(variants, args.passes)
    flops = sum(2 * N * n_in * n_out * 3 for n_in, n_out in pairs)
    return {**result, "gemm_gflop": flops / 1e9, "products": len(whole), "linears": pairs,
            "parallel": parallel,
            "blas": common.blas_info(np), "numpy": np.__version__}


def child_torch(shape, args):
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    N = shape["batch"] * shape["block_size"]
    pairs = linear_shapes(shape)
    gemms = products(torch.matmul, lambda s: torch.randn(*s), N, pairs)
    step, _, _ = build_torch(shape)              # bench_train_step's PyTorch step

    def run_all():
        for call in gemms:
            call()
    result = alternate({"torch GEMMs": run_all, "torch step": step}, args.passes)
    return {**result, "torch": torch.__version__, "blas": common.torch_blas(torch)}


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.child:
        fn = child_numpy if args.child == "numpy" else child_torch
        common.emit_result(fn(SHAPES[args.shape], args))
        return 0
    kinds = ["numpy"] + ([] if args.no_torch else ["torch"])
    load_before, results = common.load_average(), {}
    for name in args.shapes:
        children = {kind: [] for kind in kinds}
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                argv = [os.path.abspath(__file__), "--child", kind, "--shape", name,
                        "--passes", str(args.passes), "--threads", str(args.threads)]
                env = (common.thread_env if kind == "torch" else common.ours_env)(args.threads)
                children[kind].append(common.run_child(argv, env))
        results[name] = children
    report(results, args, load_before, common.load_average())
    return 0


def report(results, args, load_before, load_after):
    meta = {**common.machine_info(), "threads": args.threads, "passes": args.passes,
            "rounds": args.rounds, "load_before": load_before, "load_after": load_after}
    print(f"# Our train step's GEMM floor vs PyTorch's step, {args.threads} thread(s)\n")
    print(f"machine: {meta['cpu']}, nproc {meta['nproc']}; code at {meta['git']}; "
          f"load average before: {load_before}; after: {load_after}")
    rows, summary = [], {}
    for name, children in results.items():
        errors = [c["error"] for kids in children.values() for c in kids if "error" in c]
        if errors:
            print(f"{name}: {errors[0]}")
            continue
        ours, torch_kids = children["numpy"], children.get("torch")
        if not summary:
            print(f"numpy BLAS: {ours[0]['blas']}" + (
                f"; torch {torch_kids[0]['torch']} BLAS: {torch_kids[0]['blas']}"
                if torch_kids else ""))

        def med(kids, key):       # median over children of each child's median, in ms
            return 1e3 * statistics.median(c["median_s"][key] for c in kids)
        floors = {k: med(ours, k) for k in ("2 threads", "2 halves") if k in ours[0]["median_s"]}
        floor = min(floors.values())
        row = {"gemm_gflop": ours[0]["gemm_gflop"], "products": ours[0]["products"],
               "floor_ms": floors, "ours_step_ms": med(ours, "ours step"),
               "ours_parallel": ours[0]["parallel"],
               "steal_pct": [c["steal_pct"] for kids in children.values() for c in kids]}
        row["ours_rest_ms"] = row["ours_step_ms"] - floor
        if torch_kids:
            row["torch_gemms_ms"] = med(torch_kids, "torch GEMMs")
            row["torch_step_ms"] = med(torch_kids, "torch step")
            row["torch_rest_ms"] = row["torch_step_ms"] - row["torch_gemms_ms"]
            row["ratio"] = row["torch_step_ms"] / row["ours_step_ms"]
            row["best_reachable_ratio"] = row["torch_step_ms"] / floor
        summary[name] = row
        steal = [x for x in row["steal_pct"] if x is not None]
        rows.append([name, common.fmt(row["gemm_gflop"], 2)]
                    + [common.fmt(floors.get(k)) for k in ("2 threads", "2 halves")]
                    + [common.fmt(row.get(k)) for k in
                       ("ours_step_ms", "ours_rest_ms", "torch_gemms_ms", "torch_step_ms",
                        "torch_rest_ms")]
                    + [common.fmt(row.get(k), 2) for k in ("ratio", "best_reachable_ratio")]
                    + [common.fmt(max(steal, default=None))])
    print(f"median over {args.rounds} children of each child's median of {args.passes} "
          "passes, the variants alternating pass by pass; a pass = every Linear product of "
          "one step (forward, dx, dW), or one whole training step\n")
    print(common.markdown_table(
        ["shape", "GEMM GFLOP", "ours GEMMs ms, 2 threads", "ours GEMMs ms, 2 halves",
         "ours step ms", "ours rest ms", "torch GEMMs ms", "torch step ms", "torch rest ms",
         "ratio", "best reachable ratio", "max steal %"], rows))
    print("\nrest = whole step - its Linear products (ours: the lower of our two floors); "
          "ratio = torch step / ours step; best reachable ratio = torch step / our floor, the "
          "ratio if everything but the Linear products took no time")
    common.write_json(args.json, {"meta": meta, "summary": summary, "children": results})


if __name__ == "__main__":
    sys.exit(main())
