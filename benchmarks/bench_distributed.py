"""Data parallelism on this machine: one process against N ranks (mpiexec), plain and
ZeRO-1, and the size of the gradient buckets.

    python benchmarks/bench_distributed.py                    # shape M, 2 ranks, 1 round
    python benchmarks/bench_distributed.py --shape S --iters 40 --rounds 2 --json out.json
    python benchmarks/bench_distributed.py --quick            # smoke run, seconds

Every kind is a whole `python -m tinygrad_gpt.train` run in fresh processes, on the default
corpus, for --iters steps (log_interval 1, one evaluation at each end), with the same
total batch per step, N x B windows:

    1 process              batch N B in one step, 2 threads (what train does by default)
    1 process, accum N     B per micro-batch, N micro-batches (--batch_stream per_step:
                           exactly the N-rank run's batches)
    N ranks                B each, one thread each (OPENBLAS_NUM_THREADS=1,
                           TINYGRAD_GPT_THREADS=1), gradients averaged in 25 MB buckets
    N ranks, zero 1        the same, AdamW's moments sharded (ZeRO-1)
    N ranks, bucket 1 MB   many small buckets / bucket 10 GB: one bucket for everything

ms/step is the median of metrics.jsonl's dt_ms after the first two steps; peak RSS is the
largest process's (getrusage of the launcher's waited-for descendants). The kinds take
turns, the order flipping every round. Needs mpi4py and mpiexec (pip install -e ".[mpi]").
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_train_step import SHAPES  # noqa: E402

# A child that runs a command and reports the largest RSS among the processes it waited for
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('@@PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")


def kinds(n):
    return {"1 process": (1, {}), f"1 process, accum {n}": (1, {"accum": n}),
            f"{n} ranks": (n, {}), f"{n} ranks, zero 1": (n, {"zero": 1}),
            f"{n} ranks, bucket 1 MB": (n, {"bucket_mb": 1}),
            f"{n} ranks, one bucket": (n, {"bucket_mb": 10000})}


def command(shape, ranks, n, iters, out_dir, extra):
    size = common.model_sizes(shape)
    B = shape["batch"]
    batch = B if ranks > 1 or "accum" in extra else n * B
    flags = {"n_layer": size["n_layer"], "n_head": size["n_head"], "n_embd": size["n_embd"],
             "block_size": size["block_size"], "batch_size": batch, "max_iters": iters,
             "eval_interval": iters, "eval_iters": 1, "log_interval": 1, "sample_tokens": 0,
             "out_dir": out_dir, "gradient_accumulation_steps": extra.get("accum", 1)}
    if ranks > 1 or "accum" in extra:
        flags["batch_stream"] = "per_step"
    for key in ("zero", "bucket_mb"):
        if key in extra:
            flags[key] = extra[key]
    argv = [sys.executable, "-m", "tinygrad_gpt.train"] + [f"--{k}={v}" for k, v in flags.items()]
    if ranks > 1:
        argv = ["mpiexec", "-n", str(ranks), "-x", "OPENBLAS_NUM_THREADS=1", "-x",
                "TINYGRAD_GPT_THREADS=1", "--bind-to", "none"] + argv
    return argv


def run_kind(shape, ranks, n, iters, extra):
    out_dir = tempfile.mkdtemp(prefix="bench_dist_")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PYTHONPATH": common.ROOT}
    try:
        proc = subprocess.run([sys.executable, "-c", PEAK,
                               *command(shape, ranks, n, iters, out_dir, extra)],
                              capture_output=True, text=True, env=env, cwd=common.ROOT)
        peak = [line.split() for line in proc.stdout.splitlines() if line.startswith("@@PEAK")]
        if not peak or peak[0][2] != "0":
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
        steps = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
        dts = [s["dt_ms"] for s in steps if "dt_ms" in s][2:]
        return {"dt_ms": dts, "peak_rss_mb": int(peak[0][1]) / 1024}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="M", choices=sorted(SHAPES))
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="shape XS, 5 steps")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if shutil.which("mpiexec") is None:
        p.error('needs mpiexec: pip install -e ".[mpi]"')
    if args.quick:
        args.shape, args.iters, args.rounds = "XS", 5, 1
    shape, n = SHAPES[args.shape], args.ranks
    table = kinds(n)
    print(f"# data parallelism, shape {args.shape} {shape}, total batch {n} x "
          f"{shape['batch']}; {args.iters} steps; load average {common.load_average()}")
    runs = {k: [] for k in table}
    for r in range(args.rounds):
        for kind in (list(table) if r % 2 == 0 else list(table)[::-1]):
            result = run_kind(shape, *table[kind][:1], n, args.iters, table[kind][1])
            runs[kind].append(result)
            print(f"  round {r + 1} {kind}: " + (" | ".join(result["error"]) if "error" in
                  result else f"{statistics.median(result['dt_ms']):.1f} ms/step, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MiB"), flush=True)
    rows, base = [], None
    tokens = n * shape["batch"] * shape["block_size"]
    for kind, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            continue
        ms = statistics.median(t for r in ok for t in r["dt_ms"])
        base = base or ms
        rows.append([kind, f"{ms:,.1f}", f"{base / ms:.3f}", f"{tokens / ms * 1e3:,.0f}",
                     f"{max(r['peak_rss_mb'] for r in ok):,.0f}"])
    print()
    print(common.markdown_table(["kind", "ms/step", "speed vs 1 process", "tokens/s",
                                 "peak RSS MiB (largest process)"], rows))
    print(f"\nload average at the end: {common.load_average()}")
    if args.json:
        common.write_json(args.json, {"shape": shape, "ranks": n, "runs": runs,
                                      "machine": common.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
