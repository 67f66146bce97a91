"""Helpers shared by bench_train_step.py and bench_generate.py (standard library only at
import time: NumPy must not be imported before the thread count is fixed).

    set_threads(n)         BLAS/OpenMP thread variables, before NumPy or torch is imported
    ours_env(n)            thread_env(n) plus what the training CLI sets for itself
    like_the_cli(fast)     in a child timing our code: the CLI's OpenBLAS setting, then
                           tensor.fast.enable() (fast=False: the reference ops)
    timed_steps(fn, ...)   run fn warm-up times, then time it: median, all times, host steal
    peak_rss_mb()          this process's peak resident set size (resource.getrusage)
    matmul_peak_gflops()   float32 GEMM throughput of np.matmul on a large square product
    load_average()         os.getloadavg() as a string; wait_for_load(x) waits for < x
    cpu_ticks(), steal_percent(a, b)   CPU time the host gave to other guests (see below)
    blas_info(np), torch_blas(torch), cpu_name(), machine_info()
    run_child(argv, env)   run a benchmark child process and read back its one JSON result
    parse_shapes(...)      the --shapes option, checked
    model_sizes(shape)     GPTConfig keyword arguments for a benchmark shape
    markdown_table(...)    a Markdown table from a header and rows
"""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
RESULT_MARK = "@@RESULT@@ "   # a child's last stdout line: this mark, then its JSON result
# What tinygrad_gpt/train.py and sample.py set in their own environment, first thing (before
# NumPy loads OpenBLAS, which reads it then): idle BLAS threads sleep at once.
CLI_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4"}


def thread_env(n, base=None):
    """A copy of the environment (or `base`) with every BLAS/OpenMP thread variable set to n."""
    env = dict(os.environ if base is None else base)
    for var in THREAD_VARS:
        env[var] = str(n)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ours_env(n, base=None):
    """thread_env(n, base) for a child that times our code: also CLI_ENV, where the
    environment does not set it already (the CLIs use os.environ.setdefault too)."""
    env = thread_env(n, base)
    for var, value in CLI_ENV.items():
        env.setdefault(var, value)
    return env


def like_the_cli(fast=True):
    """In a child that times our code, before NumPy is imported (after set_threads): what
    `python -m tinygrad_gpt.train` does to its own process. CLI_ENV into os.environ (unless
    already set), then tensor.fast.enable(): the fast kernels over the reference ops and
    malloc's tuning. fast=False leaves the fast layer off (the reference ops, as with
    TINYGRAD_GPT_FAST=0). Returns whether the fast layer is on."""
    for var, value in CLI_ENV.items():
        os.environ.setdefault(var, value)
    import tensor.fast
    if fast:
        tensor.fast.enable()
    return tensor.fast.enabled()


def set_threads(n):
    """Fix the thread count in this process; call before NumPy/torch are imported."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def limit_threads(n):
    """After import: also clamp the BLAS pools through threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        pass


def timed_steps(fn, steps, warmup=3):
    """Call fn() `warmup` times untimed, then `steps` times timed, noting the host's steal
    (see cpu_ticks) over each step and over all of them: {"median_s", "times_s",
    "steal_pct", "steps_steal_pct"} in seconds and percent (steal None off Linux)."""
    for _ in range(warmup):
        fn()
    times, ticks = [], [cpu_ticks()]
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        ticks.append(cpu_ticks())
    return {"median_s": statistics.median(times), "times_s": times,
            "steal_pct": steal_percent(ticks[0], ticks[-1]),
            "steps_steal_pct": [steal_percent(a, b) for a, b in zip(ticks, ticks[1:])]}


def cpu_ticks():
    """(all CPU time, stolen CPU time) since boot in clock ticks, from /proc/stat; None
    where there is none.

    "Stolen" is time this virtual machine's CPUs wanted to run while the host ran other
    guests. On a shared host it slows every timing, often by 2x or more, and the load
    average does not show it (it counts only this guest's work): the benchmarks report
    it for the time they measured.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[7] if len(fields) > 7 else 0


def steal_percent(before, after):
    """Percent of the CPU time between two cpu_ticks() readings that was stolen."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])


def peak_rss_mb():
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, B on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def matmul_peak_gflops(n=2048, reps=10):
    """Best-of-reps float32 throughput of np.matmul on (n, n) @ (n, n): 2 n^3 flops each.

    The best (not the median) is the machine's attainable peak; load from other processes
    only lowers it.
    """
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)                       # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def wait_for_load(threshold, max_wait=300.0, poll=5.0):
    """Sleep until the 1-minute load average is below threshold (None: do not wait), for at
    most max_wait seconds. Returns the 1-minute load average when it stops waiting."""
    deadline = time.monotonic() + max_wait
    while threshold is not None and os.getloadavg()[0] >= threshold \
            and time.monotonic() < deadline:
        time.sleep(poll)
    return os.getloadavg()[0]


def load_average():
    try:
        return "%.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "unavailable"


def blas_info(np):
    """What BLAS NumPy runs on, with its thread count: threadpoolctl's runtime view when
    installed, else NumPy's build configuration."""
    try:
        from threadpoolctl import threadpool_info
        pools = [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, "
                 f"{p.get('num_threads')} threads)" for p in threadpool_info()
                 if p.get("user_api") == "blas"]
        if pools:
            return "; ".join(pools)
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        threads = os.environ.get("OPENBLAS_NUM_THREADS", "?")
        info = f"{blas.get('name')} {blas.get('version')} (OPENBLAS_NUM_THREADS={threads})"
    except Exception:
        return "unknown (see np.show_config())"
    core = openblas_core()
    return f"{info}, {core} kernels" if core else info


def openblas_core():
    """The CPU kernels a DYNAMIC_ARCH OpenBLAS picked at run time (e.g. SkylakeX), or None."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for lib in sorted(libs):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                       "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(handle, symbol, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def torch_blas(torch):
    config = torch.__config__.show()
    for part in config.replace("\n", ",").split(","):
        if "BLAS_INFO" in part:
            return part.split("=")[-1].strip()
    return "mkl" if torch.backends.mkl.is_available() else "unknown"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision():
    """The checkout's commit, with '+dirty' when tracked files under tensor/, nn/ or gpt/
    differ from it (others edit this checkout while benchmarks run)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tensor", "nn", "gpt"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        return rev + ("+dirty" if dirty.strip() else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info():
    return {"cpu": cpu_name(), "nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git": git_revision()}


def write_json(path, data):
    """Write a benchmark's results to path (when --json was given) and say so."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        print(f"\nwrote {path}")


def emit_result(result):
    """In a child: print the result as the last stdout line, for run_child to read."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_child(argv, env, timeout=None):
    """Run `python argv...` with env; return its JSON result, or {'error': ...} on failure."""
    proc = subprocess.run([sys.executable] + list(argv), env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def parse_shapes(parser, text, known):
    """'s, M' -> ['S', 'M']: the --shapes option, each name checked against `known` (the
    script's shapes; parser.error names them otherwise)."""
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in known]
    if bad:
        parser.error(f"unknown shape(s) {bad}: choose from {', '.join(known)}")
    return names


def model_sizes(shape):
    """A benchmark shape's model settings, as keyword arguments that both our GPTConfig and
    nanogpt_reference.GPTConfig take (dropout 0: the benchmarks time deterministic steps)."""
    return {key: shape[key] for key in ("vocab_size", "block_size", "n_layer", "n_head",
                                        "n_embd", "bias")} | {"dropout": 0.0}


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x, digits=1):
    """A number for a table: '-' for None, else fixed digits."""
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"
