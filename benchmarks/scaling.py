"""python benchmarks/scaling.py: a scaling audit on tinyshakespeare.

Three model sizes train on the same token budget (same data order, batch, block, schedule
and seed); for each we report the final val loss, training tokens/s, peak memory (the
training process's maximum RSS) and a sample. Bigger models reach lower loss on the same
data, at a cost in time and memory: that trade-off, measured on this machine.

    python benchmarks/scaling.py                       # three sizes, 1,500 iterations each
    python benchmarks/scaling.py --max_iters 300 --json scaling.json   # quicker
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

SIZES = {   # name: (n_layer, n_head, n_embd)
    "tiny": (2, 2, 64),
    "small": (4, 4, 128),      # nanoGPT's CPU Shakespeare model
    "medium": (6, 6, 192),
}


def run_one(name, sizes, args, workdir):
    n_layer, n_head, n_embd = sizes
    out_dir = Path(workdir) / name
    cmd = [sys.executable, "-m", "tinygrad_gpt.train", f"--data={args.data}",
           f"--out_dir={out_dir}", f"--n_layer={n_layer}", f"--n_head={n_head}",
           f"--n_embd={n_embd}", "--block_size=64", "--batch_size=12",
           f"--max_iters={args.max_iters}", f"--lr_decay_iters={args.max_iters}",
           f"--eval_interval={args.max_iters}", "--eval_iters=20", "--dropout=0",
           "--sample_tokens=200", "--log_interval=10", f"--seed={args.seed}"]
    env = {**os.environ, "TINYGRAD_GPT_CACHE": str(Path(workdir) / "cache")}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)      # this child's own peak RSS
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{name}: training failed:\n{output[-2000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "tokens_per_s" in r]
    final = [r for r in rows if "val_loss" in r][-1]
    samples = (out_dir / "samples.txt").read_text().split("=== iter")
    params = next(line for line in output.splitlines() if line.startswith("model:"))
    return {"name": name, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
            "parameters": params.split(", ", 1)[1].split(" ")[0],
            "val_loss": final["val_loss"], "train_loss": final["train_loss"],
            "tokens_per_s": sorted(r["tokens_per_s"] for r in steps)[len(steps) // 2],
            "peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall,
            "tokens": args.max_iters * 12 * 64,
            "sample": samples[-1].split("\n", 1)[1].strip()[:300]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--max_iters", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} not found (../shared/data/tinyshakespeare.txt)")
    print(f"load average before: {os.getloadavg()}")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, sizes in SIZES.items():
            results.append(run_one(name, sizes, args, workdir))
            r = results[-1]
            print(f"{name}: {r['parameters']} parameters, val {r['val_loss']:.4f}, "
                  f"{r['tokens_per_s']:,.0f} tok/s, {r['peak_rss_mib']:.0f} MiB, "
                  f"{r['wall_s']:.0f} s", flush=True)
    print(f"load average after: {os.getloadavg()}\n")
    print(f"Same budget for each: {args.max_iters} iterations x 12 x 64 = "
          f"{results[0]['tokens']:,} tokens, block 64, lr 1e-3 cosine, seed {args.seed}\n")
    print("| model | layers/heads/width | parameters | val loss | tokens/s | peak RSS | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['name']} | {r['n_layer']}/{r['n_head']}/{r['n_embd']} | {r['parameters']} "
              f"| {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mib']:.0f} MiB "
              f"| {r['wall_s']:.0f} s |")
    for r in results:
        print(f"\n{r['name']} sample:\n{r['sample']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": os.getloadavg(),
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
