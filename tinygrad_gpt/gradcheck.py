"""python -m tinygrad_gpt.gradcheck: check every hand-derived backward against finite differences.

For each op, --examples random cases (random shapes with size-1 and broadcast dims, random
values, a random upstream gradient) are checked in float64: the analytic gradient from
backward() against central differences (L(x + eps) - L(x - eps)) / 2 eps, element by
element. Prints one row per op and exits 1 if any op fails, 2 on bad arguments.

The learner hook: `--function mymodule:myfn --op layer_norm` (or `path/to/file.py:myfn`)
checks YOUR function on the random cases of that op: its backward against finite
differences, and its forward against the engine's op on the same inputs.
"""
import importlib
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from tensor import Tensor, no_grad
from tensor.finite_differences import gradcheck

from .cli import ArgumentParser, UserError, check_device, report_user_errors
from .op_cases import CASES, LEARNER_OPS, formula, learner_build, reference_function

EPS = 1e-6      # central-difference step: truncation ~eps^2, rounding ~1e-16/eps
ATOL = 1e-6     # an element passes when |analytic - numeric| <= ATOL + RTOL * |numeric|
RTOL = 1e-5
HEADER = (f"{'op':14s} {'checks':>6s} {'max abs err':>12s} {'max rel err':>12s}  "
          f"{'ok':4s}  backward")
RULE = "-" * len(HEADER)


def row(name, checks, abs_err, rel_err, ok, function):
    """One line of the table under HEADER; the last column is function's math line."""
    return (f"{name:14s} {checks:6d} {abs_err:12.2e} {rel_err:12.2e}  "
            f"{'ok' if ok else 'FAIL':4s}  {formula(function)}")


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
    parser = ArgumentParser(
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
    parser.add_argument("--function", metavar="MODULE:FN",
                        help="check your own function (module or file.py, colon, name) on "
                             "the cases of the one op named by --op")
    return parser.parse_args(argv)


def load_function(spec):
    """'package.module:name' or 'path/to/file.py:name' -> the function; UserError if absent."""
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise UserError(f"--function {spec!r}: write it as module:function or "
                        "path/to/file.py:function")
    path = Path(where)
    if where.endswith(".py") and not path.is_file():
        raise UserError(f"--function: no such file {where}")
    try:
        if where.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, ".")                  # a module in the current folder
            module = importlib.import_module(where)
    except ImportError as e:
        raise UserError(f"--function: cannot import {where} ({e})") from None
    except (Exception, SystemExit) as e:             # a learner's module may not even run
        raise UserError(f"--function: importing {where} raised {type(e).__name__}: {e}") \
            from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"--function: {where} has no function {name!r}")
    return function


def tensors(arrays, device):
    """float64 Tensors for float arrays; integer arrays (ids, targets) keep their type."""
    return [Tensor(a, dtype=np.float64 if a.dtype.kind == "f" else None, device=device)
            for a in arrays]


def check_learner(name, function, examples, seed, device):
    """Like check_op, on the learner's function; also compares its forward with the op's.

    Returns (checks, max abs err, max rel err, ok, note): note says what went wrong."""
    rng = np.random.default_rng(seed)
    worst_abs = worst_rel = 0.0
    for done in range(examples):
        case_seed = int(rng.integers(2**31))
        try:
            fn, inputs = learner_build(name, function)(np.random.default_rng(case_seed))
            ref, _ = learner_build(name, reference_function(name))(
                np.random.default_rng(case_seed))
            with no_grad():
                mine, theirs = fn(*tensors(inputs, device)), ref(*tensors(inputs, device))
            if not isinstance(mine, Tensor):
                return done + 1, worst_abs, worst_rel, False, \
                    f"returned {type(mine).__name__}, not a Tensor (build it with make)"
            if mine.shape != theirs.shape:
                return done + 1, worst_abs, worst_rel, False, f"forward gives shape " \
                    f"{mine.shape}, the engine's {name} {theirs.shape}"
            gap = float(np.abs(mine.numpy() - theirs.numpy()).max(initial=0.0))
            if not np.allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-8):
                return done + 1, worst_abs, worst_rel, False, \
                    f"forward differs from the engine's {name} by up to {gap:.3e}"
            result = gradcheck(fn, inputs, eps=EPS, atol=ATOL, rtol=RTOL,
                               seed=int(rng.integers(2**31)), device=device)
        except Exception as e:                       # a learner's bug, shown on one line
            message = str(e).splitlines()[0] if str(e) else ""
            return done + 1, worst_abs, worst_rel, False, \
                f"raised {type(e).__name__}: {message}"
        worst_abs = max(worst_abs, result.max_abs_err)
        worst_rel = max(worst_rel, result.max_rel_err)
        if not result.ok:
            return done + 1, worst_abs, worst_rel, False, "backward disagrees with finite " \
                "differences:\n" + result.report()
    return examples, worst_abs, worst_rel, True, ""


def main_function(args, device):
    """The learner hook: one row for the learner's function on one op's cases."""
    if not args.op or len(args.op) != 1:
        raise UserError("--function needs exactly one --op NAME, the op your function "
                        f"computes (one of {', '.join(LEARNER_OPS)})")
    name = args.op[0]
    if name not in LEARNER_OPS:
        raise UserError(f"--function cannot stand in for {name}: choose from "
                        f"{', '.join(LEARNER_OPS)}")
    function = load_function(args.function)
    print(f"Gradient check of {args.function} as {name}, called as "
          f"{LEARNER_OPS[name][0]}; float64, eps={EPS:g}, {args.examples} random case(s)\n")
    print(HEADER)
    print(RULE)
    checks, abs_err, rel_err, ok, note = check_learner(name, function, args.examples,
                                                       args.seed, device)
    print(row(name, checks, abs_err, rel_err, ok, function))
    if not ok:
        print(f"\nyour {name} FAILED: {note}")
        print("derivations: docs/backprop.md; a worked answer: tinygrad_gpt/exercises.py")
        return 1
    print(f"\nyour {name} passed: forward matches the engine's, backward matches "
          "finite differences")
    return 0


def main(argv=None):
    return report_user_errors(lambda args: check_all(parse_args(args)), argv)


def check_all(args):
    """Every op (or those named by --op, or the learner's --function); the exit code."""
    names = [name for name, _, _ in CASES]
    if args.list:
        print("\n".join(f"{name:14s} {formula(fn)}" for name, fn, _ in CASES))
        return 0
    if args.examples < 1:
        raise UserError(f"--examples must be at least 1, got {args.examples}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    unknown = sorted(set(args.op or []) - set(names))
    if unknown:
        raise UserError(f"unknown op {', '.join(unknown)}: choose from {', '.join(names)}")
    device = check_device(args.device)
    if args.function:
        return main_function(args, device)
    cases = [c for c in CASES if not args.op or c[0] in args.op]

    print(f"Gradient check: analytic backward vs central differences, float64, eps={EPS:g}")
    print(f"{args.examples} random case(s) per op, seed {args.seed}, device {device}; "
          f"an element passes when |analytic - numeric| <= {ATOL:g} + {RTOL:g} * |numeric|\n")
    print(HEADER)
    print(RULE)
    start, failures = time.perf_counter(), []
    for i, (name, function, build) in enumerate(cases):
        checks, abs_err, rel_err, ok = check_op(build, args.examples, args.seed + i, device)
        print(row(name, checks, abs_err, rel_err, ok, function), flush=True)
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
    from .cli import run as run_cli
    run_cli(main)
