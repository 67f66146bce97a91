"""Data parallelism on this machine: one process (with and without nn.DataParallel) against
N ranks (mpiexec; the allreduce overlapped with backward or not, ZeRO-1), and PyTorch
eager's step at the same total batch, at shapes S, M and L.

    python benchmarks/bench_distributed.py                     # S, M, L; 2 ranks; 1 round
    python benchmarks/bench_distributed.py --shapes S --iters 40 --rounds 2 --json out.json
    python benchmarks/bench_distributed.py --kinds plain,overlap-off --shapes M --rounds 6
    python benchmarks/bench_distributed.py --quick             # smoke run, seconds

Every kind of ours is a whole `python -m tinygrad_gpt.train` run in fresh processes, on the
default corpus (its char vocabulary: L is L's 12 x 768 body with that vocabulary, not
GPT-2's 50k), for --iters steps (log_interval 1, one evaluation at each end), with the same
total batch per step, N x B windows (--kinds, default all but the bucket sizes):

    parallel-on    1 process, batch N B, nn.DataParallel (the halves on the 2 cores)
    parallel-off   1 process, batch N B, one model, 2 BLAS threads
    accum          1 process, B per micro-batch, N micro-batches (--batch_stream per_step:
                   exactly the N-rank run's batches)
    plain          N ranks, B each, one thread each (OPENBLAS_NUM_THREADS=1,
                   TINYGRAD_GPT_THREADS=1), 25 MB buckets started during backward
    overlap-off    the same, every bucket started after backward (--overlap false)
    zero           the same as plain, AdamW's moments sharded (--zero 1)
    bucket-1mb, one-bucket    1 MB buckets / one bucket for everything
    torch          PyTorch eager: nanoGPT's model (benchmarks/nanogpt_reference.py), batch
                   N B, 2 threads, the bare step (zero_grad, forward, backward, clip, AdamW:
                   no batch drawing, no logging), timed in its own child

ms/step is the median of metrics.jsonl's dt_ms after the first two steps; reduce ms the
median of its reduce_ms (the time the step waited in the gradients' reduce after backward:
ZeRO-1's all-gather, inside the optimizer's step, is not in it); peak RSS the largest
process's (getrusage of the launcher's waited-for descendants: one rank's). The kinds take
turns, the order flipping every round. Needs mpi4py and mpiexec (pip install -e ".[mpi]").
"""
import argparse
import importlib.util
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
    """kind -> (label, ranks, extra train settings); "torch" is PyTorch's child."""
    return {"parallel-on": ("1 process, DataParallel on", 1, {"parallel": "on"}),
            "parallel-off": ("1 process, DataParallel off", 1, {"parallel": "off"}),
            "accum": (f"1 process, accum {n}", 1, {"accum": n}),
            "plain": (f"{n} ranks", n, {}),
            "overlap-off": (f"{n} ranks, overlap off", n, {"overlap": "false"}),
            "zero": (f"{n} ranks, zero 1", n, {"zero": 1}),
            "bucket-1mb": (f"{n} ranks, 1 MB buckets", n, {"bucket_mb": 1}),
            "one-bucket": (f"{n} ranks, one bucket", n, {"bucket_mb": 10000}),
            "torch": ("PyTorch eager, 2 threads", 1, {})}


DEFAULT_KINDS = "parallel-on,parallel-off,plain,overlap-off,zero,torch"


def command(shape, ranks, n, iters, out_dir, extra):
    size = common.model_sizes(shape)
    B = shape["batch"]
    batch = B if ranks > 1 or "accum" in extra else n * B
    flags = {"n_layer": size["n_layer"], "n_head": size["n_head"], "n_embd": size["n_embd"],
             "block_size": size["block_size"], "batch_size": batch, "max_iters": iters,
             "eval_interval": iters, "eval_iters": 1, "log_interval": 1, "sample_tokens": 0,
             "out_dir": out_dir, "gradient_accumulation_steps": extra.get("accum", 1),
             "bias": shape["bias"]}
    if ranks > 1 or "accum" in extra:
        flags["batch_stream"] = "per_step"
    for key in ("zero", "bucket_mb", "parallel", "overlap"):
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
        steps = [s for s in steps if "dt_ms" in s][2:]
        with open(os.path.join(out_dir, "tokenizer", "char.json")) as f:
            vocab = len(json.load(f)["chars"])
        return {"dt_ms": [s["dt_ms"] for s in steps], "peak_rss_mb": int(peak[0][1]) / 1024,
                "reduce_ms": [s["reduce_ms"] for s in steps if "reduce_ms" in s],
                "vocab_size": vocab}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_torch(shape, n, iters, vocab_size):
    """PyTorch's bare step at batch n B (a child with 2 threads): dt_ms and peak RSS."""
    argv = [os.path.abspath(__file__), "--torch-child", json.dumps(
        dict(shape, batch=n * shape["batch"], vocab_size=vocab_size)), "--iters", str(iters)]
    result = common.run_child(argv, common.thread_env(2))
    if "error" in result:
        return {"error": [str(result["error"])]}
    return {"dt_ms": [t * 1e3 for t in result["times_s"]], "peak_rss_mb": result["peak_rss_mb"]}


def torch_child(shape, iters):
    import torch
    from bench_train_step import build_torch
    torch.set_num_threads(2)
    step, _, _ = build_torch(shape)
    timing = common.timed_steps(step, max(iters - 2, 1), warmup=2)
    common.emit_result({**timing, "peak_rss_mb": common.peak_rss_mb()})


def median(values):
    return statistics.median(values) if values else None


def bench_shape(name, args, table):
    shape, n = SHAPES[name], args.ranks
    sizes = {k: v for k, v in shape.items() if k != "vocab_size"}  # the corpus's chars instead
    print(f"# shape {name} {sizes}, the default corpus's char vocabulary, total batch {n} x "
          f"{shape['batch']}; {args.iters} steps; load average {common.load_average()}",
          flush=True)
    runs, vocab = {k: [] for k in table}, None
    for r in range(args.rounds):
        for kind in (list(table) if r % 2 == 0 else list(table)[::-1]):
            label, ranks, extra = table[kind]
            if kind == "torch":
                if vocab is None:                  # ours first: the corpus's vocabulary
                    continue
                result = run_torch(shape, n, args.iters, vocab)
            else:
                result = run_kind(shape, ranks, n, args.iters, extra)
                vocab = result.get("vocab_size", vocab)
            runs[kind].append(result)
            print(f"  round {r + 1} {label}: " + (" | ".join(result["error"]) if "error" in
                  result else f"{median(result['dt_ms']):.1f} ms/step, peak RSS "
                  f"{result['peak_rss_mb']:.0f} MiB"), flush=True)
    rows, base = [], None
    tokens = n * shape["batch"] * shape["block_size"]
    for kind, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            continue
        ms = median([t for r in ok for t in r["dt_ms"]])
        base = base or ms
        reduce_ms = median([t for r in ok for t in r.get("reduce_ms", [])])
        rows.append([table[kind][0], f"{ms:,.1f}", f"{base / ms:.3f}",
                     f"{tokens / ms * 1e3:,.0f}",
                     "" if reduce_ms is None else f"{reduce_ms:,.1f}",
                     f"{max(r['peak_rss_mb'] for r in ok):,.0f}"])
    print()
    print(common.markdown_table(["kind", "ms/step", f"speed vs {rows[0][0]}", "tokens/s",
                                 "reduce ms/step", "peak RSS MiB (one process)"], rows))
    print(flush=True)
    return {"shape": shape, "vocab_size": vocab, "runs": runs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="S,M,L")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--kinds", default=DEFAULT_KINDS,
                   help=f"comma-separated, from {', '.join(kinds(2))} (default {DEFAULT_KINDS})")
    p.add_argument("--quick", action="store_true", help="shape XS, 5 steps")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--torch-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torch_child:
        return torch_child(json.loads(args.torch_child), args.iters) or 0
    if shutil.which("mpiexec") is None:
        p.error('needs mpiexec: pip install -e ".[mpi]"')
    table = kinds(args.ranks)
    chosen = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in table]
    if unknown or not chosen:
        p.error(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(table)}")
    if args.quick:
        args.iters, args.rounds = 5, 1
    shapes = ["XS"] if args.quick else common.parse_shapes(p, args.shapes, ("S", "M", "L"))
    if "torch" in chosen and importlib.util.find_spec("torch") is None:
        print("note: PyTorch is not installed: no torch kind (pip install -e \".[reference]\")")
        chosen.remove("torch")
    table = {k: table[k] for k in chosen}
    print(f"# data parallelism, {args.ranks} ranks; load average {common.load_average()}")
    results = {name: bench_shape(name, args, table) for name in shapes}
    print(f"load average at the end: {common.load_average()}")
    if args.json:
        common.write_json(args.json, {"ranks": args.ranks, "shapes": results,
                                      "machine": common.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
