"""python benchmarks/ab_commits.py: two checkouts of this project timed in one run, taking turns.

Every measurement is a fresh process of EACH tree's own code (cwd and PYTHONPATH = that
tree, ahead of the editable install; the imported files are checked, see WRAPPER):

    --step (default)  the training step at each of --shapes: <tree>/benchmarks/
                      bench_train_step.py --child ours (its own setup: the old tree's
                      `import tensor` set OPENBLAS_THREAD_TIMEOUT; the new one does what the
                      training CLI does), --steps timed after --warmup, per child
    --generate        cached generation at --gen-shape (default M): <tree>/benchmarks/
                      bench_generate.py --child ours_cached, --tokens from an 8-token prompt,
                      --reps timed runs per child
    --train-default   the default training run: python -m tinygrad_gpt.train --out_dir TMP
                      (plus --data and --train-args), its wall time and final val loss (the
                      20-batch estimate in metrics.jsonl, and both final checkpoints scored on
                      the whole val split by one function, bench_e2e.full_split_loss, run
                      with this script's tree)

--pairs pairs of children per measurement: before then after, the order flipping every
pair, so a slow spell of the machine falls on both. Reported per measurement: each side's
median (over all its timed steps or runs), the median over pairs of after / before (each
pair's after median over its before median), the pairs' range, each side's peak RSS
(os.wait4, the child process), the highest 1-minute load at a child's start, the host's
steal (common.cpu_ticks) over each child, and the load average at the start and the end.
No OPENBLAS_THREAD_TIMEOUT or PYTHONPATH is passed down: each tree's code sets its own.

    python benchmarks/ab_commits.py --before /work/before --after /work/main \\
        --shapes S,M,L --pairs 5 --steps 8 --json ab_step.json
    python benchmarks/ab_commits.py --before /work/before --generate --pairs 8 --reps 3
    python benchmarks/ab_commits.py --before /work/before --train-default --pairs 3
    python benchmarks/ab_commits.py --before /work/before --quick       # smoke run, ~1 min
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e  # noqa: E402
import common  # noqa: E402

SIDES = ("before", "after")
IMPORTS_MARK = "@@AB_IMPORTS@@ "
# Runs a child (a script, or -m module) as python would, then reports which files it
# imported, OPENBLAS_THREAD_TIMEOUT as the child left it, and whether tensor.fast was on.
WRAPPER = r"""
import json, os, runpy, sys
kind, target, sys.argv = sys.argv[1], sys.argv[2], sys.argv[2:]
code = 0
try:
    if kind == "-m":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
fast = sys.modules.get("tensor.fast")
print("@@AB_IMPORTS@@ " + json.dumps({
    "files": {m: getattr(sys.modules.get(m), "__file__", None)
              for m in ("tensor", "nn", "gpt", "tinygrad_gpt")},
    "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
    "fast_enabled": fast.enabled() if hasattr(fast, "enabled") else None}), flush=True)
sys.exit(code)
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/ab_commits.py",
                                description="Before/after A/B of two checkouts, taking turns.")
    p.add_argument("--before", required=True, help="the checkout to compare against")
    p.add_argument("--after", default=common.ROOT, help="default: this script's checkout")
    p.add_argument("--step", action="store_true", help="the training step (the default)")
    p.add_argument("--generate", action="store_true", help="cached generation")
    p.add_argument("--train-default", action="store_true", help="the default training run")
    p.add_argument("--shapes", default="S,M,L", help="--step shapes, from S, M, L")
    p.add_argument("--pairs", type=int, default=5, help="before/after pairs (default 5)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per child (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per child (default 2)")
    p.add_argument("--gen-shape", default="M", help="--generate shape, S or M (default M)")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per run (default 256)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per child (default 3)")
    p.add_argument("--data", default="", help="--train-default: the CLI's --data (default: "
                                               "its own, the Shakespeare corpus)")
    p.add_argument("--train-args", default="", help="--train-default: more CLI arguments")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    p.add_argument("--wait-load", type=float, metavar="X",
                   help="before each child, wait (up to --max-wait s) for load below X")
    p.add_argument("--max-wait", type=float, default=300, help="seconds (default 300)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    p.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny shape, 1 pair, 2 steps, 32 tokens, 10 iterations")
    args = p.parse_args(argv)
    args.before, args.after = os.path.abspath(args.before), os.path.abspath(args.after)
    for tree in (args.before, args.after):
        if not os.path.isfile(os.path.join(tree, "tensor", "__init__.py")):
            p.error(f"{tree} is not a checkout of this project (no tensor/__init__.py)")
    if not (args.generate or args.train_default):
        args.step = True
    if args.quick:
        args.pairs, args.steps, args.warmup, args.tokens, args.reps = 1, 2, 1, 32, 1
        args.shapes, args.gen_shape = ["XS"], "XS"
        args.train_args += " --max_iters 10 --eval_interval 10 --eval_iters 2 --sample_tokens 0"
    else:
        args.shapes = common.parse_shapes(p, args.shapes, ("S", "M", "L"))
        args.gen_shape = common.parse_shapes(p, args.gen_shape, ("S", "M"))[0]
    if min(args.pairs, args.steps, args.reps, args.tokens, args.threads) < 1 or args.warmup < 0:
        p.error("--pairs, --steps, --reps, --tokens and --threads must be >= 1")
    return args


# ----- one child -------------------------------------------------------------------------
def child_env(tree, threads):
    """The environment of a child of `tree`: BLAS threads fixed, the tree first on the
    import path, and no OPENBLAS_THREAD_TIMEOUT (each tree's code sets it for itself)."""
    env = common.thread_env(threads)
    env["PYTHONPATH"] = tree
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    return env


def run(tree, target, argv, args):
    """Run WRAPPER for `target` (a script path, or "-m module") in `tree`: its result (the
    child's @@RESULT@@ JSON, if it printed one), wall time, peak RSS, steal and imports."""
    kind, name = ("-m", target[3:]) if target.startswith("-m ") else ("path", target)
    load = common.wait_for_load(args.wait_load, args.max_wait)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        ticks, t0 = common.cpu_ticks(), time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, kind, name] + list(argv),
                                cwd=tree, env=child_env(tree, args.threads), stdout=out,
                                stderr=err)
        timer = threading.Timer(args.timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)      # this child's own peak RSS
        wall = time.perf_counter() - t0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    r = {"wall_s": wall, "rc": proc.returncode, "load_at_start": load,
         "peak_rss_mb": usage.ru_maxrss / 1024,
         "process_steal_pct": common.steal_percent(ticks, common.cpu_ticks())}
    for line in stdout.splitlines():
        if line.startswith(common.RESULT_MARK):
            r["result"] = json.loads(line[len(common.RESULT_MARK):])
        elif line.startswith(IMPORTS_MARK):
            r["imports"] = json.loads(line[len(IMPORTS_MARK):])
    r["stdout_tail"] = stdout.splitlines()[-3:]
    files = r.get("imports", {}).get("files", {})
    wrong = {m: f for m, f in files.items() if f and not f.startswith(tree + os.sep)}
    if proc.returncode != 0 or "imports" not in r or wrong:
        r["error"] = (f"{tree}: imported {wrong} from elsewhere" if wrong else
                      f"{tree}: exit {proc.returncode}: "
                      + " | ".join((stderr or stdout).strip().splitlines()[-5:]))
    return r


def pairs(args, measure):
    """measure(side) for each side, --pairs times, the order flipping every pair."""
    out = {side: [] for side in SIDES}
    for i in range(args.pairs):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            r = measure(side)
            print(f"  pair {i + 1} {side}: " + (r.get("error") or r["summary"]), flush=True)
            out[side].append(r)
    return out


def summarize(runs, value):
    """Each side's median of all its values (value(run) -> list), the median over pairs of
    after / before (each pair's medians), their range, each side's peak RSS and worst load."""
    ok = [i for i in range(len(runs["before"]))
          if "error" not in runs["before"][i] and "error" not in runs["after"][i]]
    if not ok:
        return {"error": "no pair without an error"}
    s = {"pairs": len(ok)}
    for side in SIDES:
        kids = [runs[side][i] for i in ok]
        s[side] = {"median": statistics.median(v for k in kids for v in value(k)),
                   "peak_rss_mb": max(k["peak_rss_mb"] for k in kids),
                   "max_load_at_start": max(k["load_at_start"] for k in kids),
                   "max_steal_pct": max((k["process_steal_pct"] or 0.0) for k in kids)}
    ratios = [statistics.median(value(runs["after"][i])) / statistics.median(
        value(runs["before"][i])) for i in ok]
    s.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
             ratios=ratios)
    return s


# ----- the three measurements -------------------------------------------------------------
def step_child(tree, shape, args):
    script = os.path.join(tree, "benchmarks", "bench_train_step.py")
    r = run(tree, script, ["--child", "ours", "--shape", shape, "--steps", str(args.steps),
                           "--warmup", str(args.warmup), "--threads", str(args.threads)], args)
    if "error" not in r and "result" not in r:
        r["error"] = f"{script} printed no result"
    if "error" not in r:
        res = r["result"]
        r["summary"] = (f"{1e3 * res['median_s']:.1f} ms/step, RSS {r['peak_rss_mb']:.0f} MiB, "
                        f"parallel {res.get('parallel')}, loss {res['losses'][-1]:.6f}")
    return r


def gen_child(tree, args):
    script = os.path.join(tree, "benchmarks", "bench_generate.py")
    with open(script) as f:
        if '"ours_cached"' not in f.read():
            return {"error": f"{script} has no ours_cached child"}
    r = run(tree, script, ["--child", "ours_cached", "--shape", args.gen_shape, "--tokens",
                           str(args.tokens), "--prompt", "8", "--reps", str(args.reps),
                           "--threads", str(args.threads)], args)
    if "error" not in r and "result" not in r:
        r["error"] = f"{script} printed no result"
    if "error" not in r:
        r["summary"] = (f"{1e3 * statistics.median(r['result']['times_s']):.0f} ms/run, "
                        f"RSS {r['peak_rss_mb']:.0f} MiB")
    return r


def train_child(tree, args):
    with tempfile.TemporaryDirectory() as out_dir:
        argv = ["--out_dir", out_dir] + (["--data", args.data] if args.data else []) + \
            shlex.split(args.train_args)
        r = run(tree, "-m tinygrad_gpt.train", argv, args)
        if "error" in r:
            return r
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            evals = [e for e in map(json.loads, f) if "val_loss" in e]
        r.update(final_iter=evals[-1]["iter"], val_loss=evals[-1]["val_loss"])
        score = bench_e2e.run_score(out_dir, args.threads)    # this tree's scorer, for both
    r.update(score)
    r["summary"] = (f"{r['wall_s']:.1f} s, val loss {r['val_loss']!r} (estimate), "
                    f"{r.get('full_val_loss', float('nan')):.4f} (full val), "
                    f"RSS {r['peak_rss_mb']:.0f} MiB")
    return r


def prepare_data(args):
    """Fetch and tokenize --data (default: the CLI's Shakespeare download) once, untimed, in
    each tree; both must find the same cached dataset folder."""
    code = ("import sys; from tinygrad_gpt import data; "
            "print(data.prepare(sys.argv[1], 'char', 512, quiet=True).folder)")
    folders = {}
    for side in SIDES:
        tree = getattr(args, side)
        proc = subprocess.run([sys.executable, "-c", code, args.data], cwd=tree,
                              env=child_env(tree, args.threads), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{tree}: could not prepare the data: {proc.stderr[-1000:]}")
        folders[side] = proc.stdout.strip().splitlines()[-1]
    print(f"dataset: {folders['after']}" + ("" if len(set(folders.values())) == 1 else
                                           f" (before: {folders['before']}: NOT shared)"))
    return folders


# ----- the parent ------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    results = {"meta": {**common.machine_info(), "before": args.before, "after": args.after,
                        "pairs": args.pairs, "threads": args.threads,
                        "load_before": common.load_average()}}
    print(f"# A/B: before {args.before}, after {args.after}; {args.pairs} pair(s), "
          f"{args.threads} thread(s); load average {results['meta']['load_before']}")
    for tree in (args.before, args.after):   # bytecode now, not in the first timed child
        subprocess.run([sys.executable, "-m", "compileall", "-q", tree], cwd=tree,
                       capture_output=True)
    tables = []
    if args.step:
        results["step"] = {}
        for shape in args.shapes:
            print(f"step {shape}:", flush=True)
            runs = pairs(args, lambda side: step_child(getattr(args, side), shape, args))
            s = summarize(runs, lambda r: r["result"]["times_s"])
            s["same_losses"] = same(runs, lambda r: r["result"]["losses"])
            results["step"][shape] = {"summary": s, **runs}
            tables.append((f"train step {shape}, ms/step", 1e3, s))
    if args.generate:
        print(f"generate {args.gen_shape}:", flush=True)
        runs = pairs(args, lambda side: gen_child(getattr(args, side), args))
        s = summarize(runs, lambda r: r["result"]["times_s"])
        s["same_losses"] = same(runs, lambda r: r["result"]["first_new_ids"])
        results["generate"] = {"shape": args.gen_shape, "summary": s, **runs}
        tables.append((f"cached generation {args.gen_shape}, ms/run", 1e3, s))
    if args.train_default:
        results["train_default"] = {"datasets": prepare_data(args)}
        print("train default:", flush=True)
        runs = pairs(args, lambda side: train_child(getattr(args, side), args))
        s = summarize(runs, lambda r: [r["wall_s"]])
        s["same_losses"] = same(runs, lambda r: r["val_loss"])
        for side in SIDES:
            if isinstance(s.get(side), dict):
                kids = [r for r in runs[side] if "error" not in r]
                s[side]["val_losses"] = sorted({r["val_loss"] for r in kids})
                s[side]["full_val_losses"] = sorted({r.get("full_val_loss") for r in kids})
        results["train_default"].update(summary=s, **runs)
        tables.append(("default training run, wall s", 1.0, s))
    results["meta"]["load_after"] = common.load_average()
    report(tables, results)
    common.write_json(args.json, results)
    failed = any("error" in s for _, _, s in tables)
    return 1 if failed else 0


def same(runs, value):
    """True when every run of both sides gave the same value (bit-exact), None if none ran."""
    values = [json.dumps(value(r)) for side in SIDES for r in runs[side] if "error" not in r]
    return None if not values else len(set(values)) == 1


def report(tables, results):
    rows = []
    for label, unit, s in tables:
        if "error" in s:
            rows.append([label] + ["error"] * 10)
            continue
        b, a = s["before"], s["after"]
        rows.append([label, common.fmt(b["median"] * unit, 1), common.fmt(a["median"] * unit, 1),
                     f"{s['ratio']:.3f}", f"{s['ratio_min']:.3f}-{s['ratio_max']:.3f}",
                     str(s["pairs"]), common.fmt(b["peak_rss_mb"], 0),
                     common.fmt(a["peak_rss_mb"], 0),
                     f"{max(b['max_load_at_start'], a['max_load_at_start']):.2f}",
                     common.fmt(max(b["max_steal_pct"], a["max_steal_pct"]), 1),
                     {True: "yes", False: "no", None: "-"}[s["same_losses"]]])
    print(f"\nload average at the start: {results['meta']['load_before']}; "
          f"at the end: {results['meta']['load_after']}\n")
    print(common.markdown_table(
        ["measurement", "before", "after", "after / before (median of pairs)", "pair range",
         "pairs", "before peak RSS MiB", "after peak RSS MiB", "max load at start",
         "max steal %", "bit-exact same results"], rows))
    print("\nbefore / after: each side's median over all its steps (runs); after / before: "
          "per pair, then the median. Same results: the losses (step), the sampled ids "
          "(generation) or the final val loss (training run) equal in every child.")
    train = results.get("train_default", {}).get("summary", {})
    for side in SIDES:
        if isinstance(train.get(side), dict):
            print(f"train default {side}: val loss (20-batch estimate) "
                  f"{train[side]['val_losses']}, full val split "
                  f"{train[side]['full_val_losses']}")
    children = [r for kind in ("step", "generate", "train_default") if kind in results
                for per in (results[kind].values() if kind == "step" else [results[kind]])
                for side in SIDES for r in per.get(side, [])]
    for r in children:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    for side in SIDES:          # what the first child of each side really ran
        imports = next((r["imports"] for r in children if "imports" in r
                        and r["imports"]["files"]["tensor"].startswith(
                            results["meta"][side] + os.sep)), None)
        if imports:
            print(f"{side} children: tensor from {imports['files']['tensor']}, "
                  f"OPENBLAS_THREAD_TIMEOUT={imports['OPENBLAS_THREAD_TIMEOUT']}, "
                  f"tensor.fast enabled: {imports['fast_enabled']}")


if __name__ == "__main__":
    sys.exit(main())
