"""python -m tinygrad_gpt.gradcheck: check every hand-derived backward against finite differences.

For each op, --examples random cases (random shapes with size-1 and broadcast dims, random
values, a random upstream gradient) are checked in float64: the analytic gradient from
backward() against central differences (L(x + eps) - L(x - eps)) / 2 eps, element by
element. Prints one row per op and exits 1 if any op fails, 2 on bad arguments.
"""
import argparse
import sys
import time

import numpy as np

from tensor import backend
from tensor.gradcheck import gradcheck

from .op_cases import CASES, formula

EPS = 1e-6      # central-difference step: truncation ~eps^2, rounding ~1e-16/eps
ATOL = 1e-6     # an element passes when |analytic - numeric| <= ATOL + RTOL * |numeric|
RTOL = 1e-5


def check_op(build, examples, seed, device):
    """Run `examples` random cases of one op; return (checks, max abs err, max rel err, ok)."""
    rng = np.random.default_rng(seed)
    worst_abs = worst_rel = 0.0
    ok = True
    for _ in range(examples):
        fn, inputs = build(rng)
        result = gradcheck(fn, inputs, eps=EPS, atol=ATOL, rtol=RTOL,
                           seed=int(rng.integers(2**31)), device=device)
        worst_abs = max(worst_abs, result.max_abs_err)
        worst_rel = max(worst_rel, result.max_rel_err)
        ok = ok and result.ok
    return examples, worst_abs, worst_rel, ok


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tinygrad_gpt.gradcheck",
        description="Check every op's hand-derived backward against central finite "
                    "differences in float64, on random shapes.")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--examples", type=int, default=5,
                        help="random cases per op (default 5)")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help="check only this op (repeatable); default: every op")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--list", action="store_true", help="list the ops and exit")
    return parser.parse_args(argv)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    names = [name for name, _, _ in CASES]
    if args.list:
        print("\n".join(f"{name:14s} {formula(fn)}" for name, fn, _ in CASES))
        return 0
    if args.examples < 1:
        fail(f"--examples must be at least 1, got {args.examples}")
    unknown = sorted(set(args.op or []) - set(names))
    if unknown:
        fail(f"unknown op {', '.join(unknown)}: choose from {', '.join(names)}")
    try:
        device = backend.check_device(args.device)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    cases = [c for c in CASES if not args.op or c[0] in args.op]

    print(f"Gradient check: analytic backward vs central differences, float64, eps={EPS:g}")
    print(f"{args.examples} random case(s) per op, seed {args.seed}, device {device}; "
          f"an element passes when |analytic - numeric| <= {ATOL:g} + {RTOL:g} * |numeric|\n")
    header = f"{'op':14s} {'checks':>6s} {'max abs err':>12s} {'max rel err':>12s}  {'ok':4s}  backward"
    print(header)
    print("-" * len(header))
    start, failures = time.perf_counter(), []
    for i, (name, function, build) in enumerate(cases):
        checks, abs_err, rel_err, ok = check_op(build, args.examples, args.seed + i, device)
        print(f"{name:14s} {checks:6d} {abs_err:12.2e} {rel_err:12.2e}  "
              f"{'ok' if ok else 'FAIL':4s}  {formula(function)}", flush=True)
        if not ok:
            failures.append(name)
    seconds = time.perf_counter() - start
    total = len(cases) * args.examples
    if failures:
        print(f"\n{len(failures)} of {len(cases)} ops FAILED: {', '.join(failures)} "
              f"({total} checks, {seconds:.1f} s)")
        return 1
    print(f"\nall {len(cases)} ops passed ({total} checks, {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
