"""python benchmarks/bench_ops.py: forward+backward time of each op at GPT-sized shapes.

For every op, one "step" is: clear the inputs' .grad, run the forward, run backward (with
a fixed random upstream gradient for a non-scalar output). The same step is timed in
PyTorch eager on the CPU in the same run when torch is importable, on the same input
values and with the same number of threads, and the table gives ours / torch per op.
Timings are the median of N repetitions (time.perf_counter) after warm-up; slow ops get
fewer repetitions (at least --min-reps) so that one op takes about --budget seconds. The
last column, the ratio of the fastest runs, is less sensitive to other load. Ours
and torch take turns in --rounds rounds, so that load from other processes on a shared
machine falls on both sides of a ratio alike.

The matmul section turns the matmul times into GFLOP/s (a forward and its backward are
three GEMMs: y = a b, da = dy b^T, db = a^T dy, so 3 * 2 M N K flops) and compares them
with the same three products done by plain np.matmul, to show the op runs at the speed
of the BLAS underneath.

    python benchmarks/bench_ops.py                 # both shapes, every op
    python benchmarks/bench_ops.py --quick         # a fast smoke run (small shape, few reps)
    python benchmarks/bench_ops.py --threads 1 --json results.json --ops softmax,gelu
    python benchmarks/bench_ops.py --threads 1 --clock thread   # on a machine busy with other work

The thread count is fixed before NumPy is imported (OPENBLAS/OMP/MKL_NUM_THREADS), and
through threadpoolctl too when it is installed; torch gets torch.set_num_threads; with
--threads 1 the fast kernels' own two-core split is off too (tensor.fast.threads).

Our ops run as the training step runs them: OPENBLAS_THREAD_TIMEOUT=4 set before NumPy
loads and tensor.fast.enable() (the fast kernels over gelu, layer_norm, cross_entropy and
attention), as `python -m tinygrad_gpt.train` does; --reference times the reference ops
(tensor/, the fast layer off) instead.
"""
import argparse
import gc
import os
import platform
import statistics
import sys
import time

from common import (blas_info, cpu_name, like_the_cli, load_average,  # shared with the
                    torch_blas, write_json)                            # other benchmarks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

# name -> (B, T, C, n_head): the two GPT configurations of the issue.
CONFIGS = {"small": (12, 64, 128, 4), "large": (4, 256, 384, 6)}
BIG_VOCAB = 50304
CHAR_VOCAB = 65
TARGET = 1.5   # the goal: each fused op within 1.5x of PyTorch eager on the CPU


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_ops.py",
                                description="Forward+backward time per op, ours vs PyTorch "
                                            "eager on the CPU.")
    p.add_argument("--threads", type=int, default=2,
                   help="BLAS/OpenMP threads for NumPy and torch (default 2, this machine's cores)")
    p.add_argument("--reps", type=int, default=30,
                   help="timed repetitions per op at most (default 30)")
    p.add_argument("--min-reps", type=int, default=7,
                   help="timed repetitions per op at least (default 7)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds in which ours and torch take turns on each op (default 3)")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds of timed runs per op and library, roughly (default 2)")
    p.add_argument("--configs", default="small,large",
                   help=f"comma-separated shape configs from {', '.join(CONFIGS)} (default both)")
    p.add_argument("--ops", default="",
                   help="comma-separated substrings: only ops whose name has one")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="wall: time.perf_counter (default); thread: time.thread_time, this "
                        "thread's CPU time, which other processes' load hardly changes "
                        "(needs --threads 1, so that all the work runs on this thread)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch even if installed")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small shape, 1 warm-up, 3 reps, no V=50304 cross_entropy")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--reference", action="store_true",
                   help="time our reference ops (tensor.fast not enabled)")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.warmup, args.reps, args.min_reps, args.budget = "small", 1, 3, 3, 0.3
        args.rounds = 1
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}: choose from {list(CONFIGS)}")
    if args.clock == "thread" and args.threads != 1:
        p.error("--clock thread needs --threads 1: other threads' work would not be counted")
    if args.threads < 1 or args.rounds < 1 or args.min_reps < 1:
        p.error("--threads, --rounds and --min-reps must be at least 1")
    args.ops = [s.strip() for s in args.ops.split(",") if s.strip()]
    return args


# ----- the ops ------------------------------------------------------------------------------
class Case:
    """One op at one shape: inputs as NumPy arrays, the op written for both libraries."""

    def __init__(self, name, shape, inputs, ours, ref, upstream=True, flops=0.0, raw=None):
        self.name, self.shape = name, shape
        self.inputs = inputs        # list of (array, requires_grad)
        self.ours, self.ref = ours, ref   # fn(*tensors) -> output, for tensor/ and for torch
        self.upstream = upstream    # feed a random gradient of the output's shape (else scalar)
        self.flops = flops          # forward+backward flops (matmuls only)
        self.raw = raw              # the same GEMMs in plain np.matmul (matmuls only)


def build_cases(config, quick, np, F, torch_F):
    B, T, C, nh = CONFIGS[config]
    hs = C // nh
    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ids(V):
        return rng.integers(0, V, size=(B, T)).astype(np.int64)

    tF = torch_F
    cases = []

    # linear-layer matmul (B,T,C) @ (C,4C), as x @ W with the one-GEMM weight gradient
    x, w = normal(B, T, C), normal(C, 4 * C, scale=0.05)
    M, K, N = B * T, C, 4 * C

    def raw_linear(x=x, w=w, dy=normal(B, T, 4 * C)):
        def run():
            np.matmul(x, w)
            np.matmul(dy, w.T)
            np.matmul(x.reshape(-1, K).T, dy.reshape(-1, N))
        return run
    cases.append(Case("matmul x@W", f"({B},{T},{C})@({C},{4 * C})", [(x, True), (w, True)],
                      lambda a, b: a @ b, lambda a, b: a @ b,
                      flops=6.0 * M * K * N, raw=raw_linear()))

    # F.linear, the fused op nn.Linear runs: x @ W^T + b with W (4C, C)
    wt, bias = normal(4 * C, C, scale=0.05), normal(4 * C, scale=0.1)
    cases.append(Case("F.linear x@W^T+b", f"({B},{T},{C}), W ({4 * C},{C})",
                      [(x, True), (wt, True), (bias, True)],
                      lambda a, b, c: F.linear(a, b, c), lambda a, b, c: tF.linear(a, b, c),
                      flops=6.0 * M * K * N))

    # attention: q @ k^T (B,nh,T,hs)@(B,nh,hs,T) and att @ v (B,nh,T,T)@(B,nh,T,hs)
    q, kt = normal(B, nh, T, hs), normal(B, nh, hs, T)

    def raw_batched(a, b, dy):
        def run():
            np.matmul(a, b)
            np.matmul(dy, b.swapaxes(-1, -2))
            np.matmul(a.swapaxes(-1, -2), dy)
        return run
    cases.append(Case("matmul q@k^T", f"({B},{nh},{T},{hs})@({B},{nh},{hs},{T})",
                      [(q, True), (kt, True)], lambda a, b: a @ b, lambda a, b: a @ b,
                      flops=6.0 * B * nh * T * hs * T,
                      raw=raw_batched(q, kt, normal(B, nh, T, T))))
    att, v = normal(B, nh, T, T), normal(B, nh, T, hs)
    cases.append(Case("matmul att@v", f"({B},{nh},{T},{T})@({B},{nh},{T},{hs})",
                      [(att, True), (v, True)], lambda a, b: a @ b, lambda a, b: a @ b,
                      flops=6.0 * B * nh * T * T * hs,
                      raw=raw_batched(att, v, normal(B, nh, T, hs))))

    # the fused attention op: softmax(q k^T / sqrt(hs) + causal mask) v, one graph node
    k_, v_ = normal(B, nh, T, hs), normal(B, nh, T, hs)
    if hasattr(F, "scaled_dot_product_attention"):
        cases.append(Case("attention (fused, causal)", f"q, k, v ({B},{nh},{T},{hs})",
                          [(q, True), (k_, True), (v_, True)],
                          lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                          lambda a, b, c: tF.scaled_dot_product_attention(a, b, c, is_causal=True)))

    scores = normal(B, nh, T, T)
    cases.append(Case("softmax", f"({B},{nh},{T},{T}) axis -1", [(scores, True)],
                      lambda a: F.softmax(a, axis=-1), lambda a: tF.softmax(a, dim=-1)))
    cases.append(Case("log_softmax", f"({B},{nh},{T},{T}) axis -1", [(scores, True)],
                      lambda a: F.log_softmax(a, axis=-1), lambda a: tF.log_softmax(a, dim=-1)))

    ln_w, ln_b = 1 + normal(C, scale=0.1), normal(C, scale=0.1)
    cases.append(Case("layer_norm w+b", f"({B},{T},{C})", [(x, True), (ln_w, True), (ln_b, True)],
                      lambda a, w, b: F.layer_norm(a, w, b),
                      lambda a, w, b: tF.layer_norm(a, (C,), w, b, eps=1e-5)))

    h = normal(B, T, 4 * C)
    cases.append(Case("gelu tanh", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: F.gelu(a), lambda a: tF.gelu(a, approximate="tanh")))

    for V in (CHAR_VOCAB, BIG_VOCAB):
        table = normal(V, C, scale=0.02)
        cases.append(Case(f"embedding V={V}", f"ids ({B},{T}), W ({V},{C})",
                          [(ids(V), False), (table, True)],
                          lambda i, W: F.embedding(i, W), lambda i, W: tF.embedding(i, W)))

    for V in (CHAR_VOCAB, BIG_VOCAB):
        if V == BIG_VOCAB and quick:
            continue
        logits = normal(B, T, V)
        cases.append(Case(f"cross_entropy V={V}", f"({B},{T},{V})",
                          [(logits, True), (ids(V), False)],
                          lambda a, t: F.cross_entropy(a, t, ignore_index=-1),
                          lambda a, t, V=V: tF.cross_entropy(a.view(-1, V), t.view(-1),
                                                             ignore_index=-1),
                          upstream=False))

    cases.append(Case("add bias", f"({B},{T},{4 * C})+({4 * C},)", [(h, True), (bias, True)],
                      lambda a, b: a + b, lambda a, b: a + b))
    h2 = normal(B, T, 4 * C)
    cases.append(Case("mul", f"({B},{T},{4 * C})*({B},{T},{4 * C})", [(h, True), (h2, True)],
                      lambda a, b: a * b, lambda a, b: a * b))
    cases.append(Case("exp", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: a.exp(), lambda a: a.exp()))
    cases.append(Case("tanh", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: a.tanh(), lambda a: a.tanh()))
    cases.append(Case("sum axis -1", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: a.sum(axis=-1), lambda a: a.sum(dim=-1)))
    cases.append(Case("mean axis -1", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: a.mean(axis=-1), lambda a: a.mean(dim=-1)))
    cases.append(Case("max axis -1", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: a.max(axis=-1), lambda a: a.amax(dim=-1)))
    cases.append(Case("var axis -1", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: a.var(axis=-1), lambda a: a.var(dim=-1, correction=0)))
    cases.append(Case("dropout p=0.1", f"({B},{T},{4 * C})", [(h, True)],
                      lambda a: F.dropout(a, 0.1), lambda a: tF.dropout(a, 0.1, training=True)))
    future = np.triu(np.ones((T, T), bool), k=1)
    t_future = None
    if torch_F is not None:
        import torch
        t_future = torch.from_numpy(future)
    cases.append(Case("masked_fill causal", f"({B},{nh},{T},{T})", [(scores, True)],
                      lambda a: a.masked_fill(future, -np.inf),
                      lambda a: a.masked_fill(t_future, float("-inf"))))
    y_heads = normal(B, nh, T, hs)
    cases.append(Case("transpose+reshape", f"({B},{nh},{T},{hs})->({B},{T},{C})", [(y_heads, True)],
                      lambda a: a.transpose(1, 2).reshape(B, T, C),
                      lambda a: a.transpose(1, 2).reshape(B, T, C)))
    return cases


# ----- timing -------------------------------------------------------------------------------
def make_step(case, lib, np, upstream):
    """A no-argument function running one forward+backward of `case` in `lib`."""
    if lib == "ours":
        from tensor import Tensor
        tensors = [Tensor(a, requires_grad=needs) for a, needs in case.inputs]
        fn, grad = case.ours, upstream
    else:
        import torch
        tensors = [torch.from_numpy(a.copy()).requires_grad_(needs) for a, needs in case.inputs]
        fn, grad = case.ref, None if upstream is None else torch.from_numpy(upstream)
    leaves = [t for t, (_, needs) in zip(tensors, case.inputs) if needs]

    def step():
        for t in leaves:
            t.grad = None
        y = fn(*tensors)
        if grad is None:
            y.backward()
        else:
            y.backward(grad)
    return step


def measure(steps, args):
    """Median and minimum seconds of each step in `steps` (name -> function), after warm-up.

    The libraries take turns: --rounds rounds, each running every step's share of the
    repetitions (after one untimed run, as switching libraries wakes other thread pools),
    so a burst of load from other processes lands on both sides of a ratio alike.
    """
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    gc.collect()
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    share = {}
    for name, step in steps.items():
        t0 = clock()
        step()
        first = clock() - t0
        reps = max(args.min_reps, min(args.reps, int(args.budget / max(first, 1e-9))))
        share[name] = -(-reps // args.rounds)           # ceil: each round's repetitions
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            step()
            for _ in range(share[name]):
                t0 = clock()
                step()
                times[name].append(clock() - t0)
    return {name: (statistics.median(t), min(t), len(t)) for name, t in times.items()}


def output_shape(case, np):
    """The shape of the op's output (ours, no graph), to draw the upstream gradient."""
    from tensor import Tensor, no_grad
    with no_grad():
        y = case.ours(*[Tensor(a) for a, _ in case.inputs])
    return y.shape


# ----- reporting ----------------------------------------------------------------------------
def fmt_ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def main(argv=None):
    args = parse_args(argv)
    for var in THREAD_VARS:          # must happen before NumPy (and its BLAS) is loaded
        os.environ[var] = str(args.threads)
    sys.path.insert(0, ROOT)
    fast = like_the_cli(fast=not args.reference)       # loads NumPy
    import numpy as np
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    import tensor.fast.threads
    import tensor.functional as F
    if args.threads == 1:            # the fast kernels' blocks on this thread only
        tensor.fast.threads.set_threads(1)

    torch = torch_F = None
    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional as torch_F
            torch.set_num_threads(args.threads)
        except ImportError:
            torch = None

    meta = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
        "python": platform.python_version(), "numpy": np.__version__, "numpy_blas": blas_info(np),
        "torch": torch.__version__ if torch else None,
        "torch_blas": torch_blas(torch) if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "load_average_start": load_average(), "warmup": args.warmup, "clock": args.clock,
        "fast": fast,
        "reps": f"{args.min_reps}..{args.reps} per library and op (about {args.budget:g} s), "
                f"in {args.rounds} alternating round(s)",
    }
    print("# bench_ops: forward+backward per op, median ms (float32, CPU)")
    print(f"cpu: {meta['cpu']} ({meta['cores']} cores); threads: {args.threads}")
    print(f"numpy {meta['numpy']}, BLAS: {meta['numpy_blas']}; ours: "
          + ("fast kernels (tensor.fast)" if fast else "reference ops (tensor.fast off)"))
    if torch:
        print(f"torch {meta['torch']} eager, BLAS: {meta['torch_blas']}, "
              f"threads: {meta['torch_threads']}")
    else:
        print("torch: not timed (not installed or --no-torch)")
    print(f"load average at start (1, 5, 15 min): {meta['load_average_start']}")
    print(f"warm-up {args.warmup}, then {meta['reps']}; clock: "
          + ("wall (time.perf_counter)" if args.clock == "wall"
             else "thread CPU time (time.thread_time)") + "\n", flush=True)

    results = []
    for config in args.configs:
        B, T, C, nh = CONFIGS[config]
        cases = build_cases(config, args.quick, np, F, torch_F)
        if args.ops:
            cases = [c for c in cases if any(s in c.name for s in args.ops)]
        title = f"{config}: B={B}, T={T}, C={C}, n_head={nh}"
        print(f"### {title}\n")
        print("| op | shape | ours ms | torch ms | ours/torch | within 1.5x | ratio of mins |")
        print("| --- | --- | ---: | ---: | ---: | :---: | ---: |", flush=True)
        for case in cases:
            rng = np.random.default_rng(1)
            upstream = (rng.standard_normal(output_shape(case, np)).astype(np.float32)
                        if case.upstream else None)
            steps = {"ours": make_step(case, "ours", np, upstream)}
            if torch:
                steps["torch"] = make_step(case, "torch", np, upstream)
            if case.raw is not None:
                steps["np.matmul"] = case.raw
            timed = measure(steps, args)
            ours_med, ours_min, ours_reps = timed["ours"]
            ref_med, ref_min, ref_reps = timed.get("torch", (None, None, 0))
            raw_med = timed["np.matmul"][0] if "np.matmul" in timed else None
            ratio = ours_med / ref_med if ref_med else None
            min_ratio = ours_min / ref_min if ref_min else None
            ok = "-" if ratio is None else ("yes" if ratio <= TARGET else "**no**")
            print(f"| {case.name} | {case.shape} | {fmt_ms(ours_med)} | {fmt_ms(ref_med)} | "
                  f"{'-' if ratio is None else f'{ratio:.2f}'} | {ok} | "
                  f"{'-' if min_ratio is None else f'{min_ratio:.2f}'} |", flush=True)
            results.append({
                "config": config, "B": B, "T": T, "C": C, "n_head": nh, "op": case.name,
                "shape": case.shape, "ours_ms": ours_med * 1e3, "ours_min_ms": ours_min * 1e3,
                "ours_reps": ours_reps,
                "torch_ms": None if ref_med is None else ref_med * 1e3,
                "torch_min_ms": None if ref_min is None else ref_min * 1e3, "torch_reps": ref_reps,
                "ratio": ratio, "ratio_of_mins": min_ratio,
                "within_target": None if ratio is None else ratio <= TARGET,
                "flops": case.flops or None,
                "numpy_matmul_ms": None if raw_med is None else raw_med * 1e3,
            })
        print()

    matmuls = [r for r in results if r["flops"]]
    if matmuls:
        print("### matmul throughput (forward + backward = 3 GEMMs, 6*M*N*K flop)\n")
        print("| config | op | GFLOP | ours GFLOP/s | np.matmul GFLOP/s | ours/np.matmul time | "
              "torch GFLOP/s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in matmuls:
            gflop = r["flops"] / 1e9
            ours = gflop / (r["ours_ms"] / 1e3)
            raw = None if r["numpy_matmul_ms"] is None else gflop / (r["numpy_matmul_ms"] / 1e3)
            ref = None if r["torch_ms"] is None else gflop / (r["torch_ms"] / 1e3)
            r["ours_gflops"], r["numpy_matmul_gflops"], r["torch_gflops"] = ours, raw, ref
            rel = "-" if raw is None else f"{r['ours_ms'] / r['numpy_matmul_ms']:.2f}"
            print(f"| {r['config']} | {r['op']} | {gflop:.3f} | {ours:.1f} | "
                  f"{'-' if raw is None else f'{raw:.1f}'} | {rel} | "
                  f"{'-' if ref is None else f'{ref:.1f}'} |")
        print("\n(np.matmul: the same three products in plain NumPy, no graph; F.linear adds "
              "the bias and has no np.matmul row)")

    meta["load_average_end"] = load_average()
    missed = [f"{r['config']}:{r['op']}" for r in results if r["within_target"] is False]
    print(f"\nload average at end (1, 5, 15 min): {meta['load_average_end']}")
    if torch:
        print(f"ops over {TARGET}x torch: {', '.join(missed) if missed else 'none'}")
    write_json(args.json, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
