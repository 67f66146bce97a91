"""python benchmarks/run_all.py: every performance measurement of the project in one go
(about 8 minutes on a 2-core machine), written to ONE JSON file.

    1. bench_train_step.py  S, M, L train steps, ours vs PyTorch eager taking turns
    2. bench_generate.py    256 tokens at S and M: cached, uncached, nanoGPT's generate
    3. bench_e2e.py         nanoGPT's CPU Shakespeare run (2000 iterations), ours vs nanoGPT

Each script prints its own tables (shown as they come) and writes its JSON; this script
gathers them under one object, {"meta": ..., "train_step": ..., "generate": ..., "e2e": ...},
in benchmarks/results.json (next to benchmarks/README.md, whose tables quote it) or --json.
PyTorch is optional: without it, only our numbers are measured. Run it on an idle machine.

    python benchmarks/run_all.py
    python benchmarks/run_all.py --quick --json /tmp/smoke.json     # seconds, a smoke run
    python benchmarks/run_all.py --max-steal 10     # on a shared host: rerun disturbed steps
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/run_all.py",
                                description="Run every benchmark; one JSON of results.")
    p.add_argument("--json", metavar="PATH", default=os.path.join(HERE, "results.json"),
                   help="where to write (default benchmarks/results.json)")
    p.add_argument("--quick", action="store_true", help="smoke run of each script (seconds)")
    p.add_argument("--no-torch", action="store_true", help="our numbers only")
    p.add_argument("--data", help="text for the end-to-end run (default tinyshakespeare in "
                                  "../shared/data)")
    p.add_argument("--max-steal", metavar="PCT",
                   help="passed to bench_train_step.py: rerun (twice at most) a child during "
                        "whose steps the host stole more than PCT%% of the CPU time")
    return p.parse_args(argv)


def plan(args):
    """(name, script, extra arguments) for each benchmark."""
    no_torch = ["--no-torch"] if args.no_torch else []
    e2e = (["--max-iters", "20"] if args.quick else []) + (["--data", args.data] if args.data
                                                           else [])
    quick = ["--quick"] if args.quick else []
    steal = ["--max-steal", args.max_steal] if args.max_steal else []
    return [("train_step", "bench_train_step.py", quick + no_torch + steal),
            ("generate", "bench_generate.py", quick + no_torch),
            ("e2e", "bench_e2e.py", e2e + no_torch)]


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    results = {"meta": {**common.machine_info(), "load_before": common.load_average(),
                        "quick": args.quick}}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, script, extra in plan(args):
            out = os.path.join(tmp, name + ".json")
            print(f"\n===== {script} {' '.join(extra)} =====", flush=True)
            start = time.perf_counter()
            code = subprocess.run([sys.executable, os.path.join(HERE, script), "--json", out]
                                  + extra, cwd=common.ROOT).returncode
            seconds = time.perf_counter() - start
            if code != 0 or not os.path.exists(out):
                failed.append(script)
                results[name] = {"error": f"{script} exited with {code}", "seconds": seconds}
                continue
            with open(out) as f:
                results[name] = {**json.load(f), "seconds": seconds}
    results["meta"]["load_after"] = common.load_average()
    results["meta"]["seconds"] = time.perf_counter() - t0
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nall benchmarks: {results['meta']['seconds']:.0f} s; wrote {args.json}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
