"""python benchmarks/bench_e2e.py: nanoGPT's CPU Shakespeare run end to end, ours beside
nanoGPT's training loop in PyTorch eager, same machine, same run.

    ours:     python -m tinygrad_gpt.train --data DATA --preset shakespeare-char-cpu
              --sample_tokens 0   (nanoGPT's train.py prints no samples; ours by default
              prints 200 sampled tokens at every evaluation, ~6 s of a run)
    nanoGPT:  nanoGPT's train.py loop (get_batch, estimate_loss, get_lr, AdamW, clip 1.0)
              around benchmarks/nanogpt_reference.py's model, with the settings of
              `python train.py config/train_shakespeare_char.py --device=cpu --compile=False
              --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
              --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`

Both: character vocabulary, first 90% of the text to train and the last 10% to validate,
2000 iterations (+1: nanoGPT's loop, and ours, also step at iteration 2000), evaluation of
20 batches per split every 250 iterations, 2 threads. Reported: wall time of the whole
process (start-up, data, model, training, evaluation; ours also writes checkpoints), and
the val loss at iteration 2000. Both use seed 1337. The two val losses differ by run-to-run
noise (different random batches), about +-0.01.

    python benchmarks/bench_e2e.py                        # both, ~4 minutes
    python benchmarks/bench_e2e.py --max-iters 200        # a shorter run
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DEFAULT_DATA = os.path.join(common.ROOT, "..", "shared", "data", "tinyshakespeare.txt")
NANOGPT = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
               bias=False, learning_rate=1e-3, min_lr=1e-4, beta1=0.9, beta2=0.99,
               warmup_iters=100, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
               eval_iters=20, seed=1337)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_e2e.py",
                                description="nanoGPT's CPU Shakespeare run: ours vs nanoGPT.")
    p.add_argument("--data", default=DEFAULT_DATA, help="text file (default tinyshakespeare)")
    p.add_argument("--max-iters", type=int, default=2000, help="iterations (default 2000)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    p.add_argument("--no-torch", action="store_true", help="run ours only")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not os.path.isfile(args.data):
        p.error(f"no text file at {args.data}: pass --data PATH")
    if args.max_iters < 1:
        p.error("--max-iters must be >= 1")
    return args


def run_ours(args):
    with tempfile.TemporaryDirectory() as out_dir:
        argv = [sys.executable, "-m", "tinygrad_gpt.train", "--data", args.data,
                "--preset", "shakespeare-char-cpu", "--out_dir", out_dir, "--sample_tokens", "0",
                "--max_iters", str(args.max_iters), "--lr_decay_iters", str(args.max_iters)]
        t0, ticks = time.perf_counter(), common.cpu_ticks()
        proc = subprocess.run(argv, env=common.thread_env(args.threads), cwd=common.ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        steal = common.steal_percent(ticks, common.cpu_ticks())
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            evals = [r for r in map(json.loads, f) if "val_loss" in r]
    return {"wall_s": wall, "final_iter": evals[-1]["iter"], "val_loss": evals[-1]["val_loss"],
            "steal_pct": steal, "evals": evals}


def nanogpt_child(args):
    """nanoGPT's train.py loop, in this process (a child, so the threads are fixed)."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import nanogpt_reference as ref
    cfg = NANOGPT
    t0 = time.perf_counter()
    torch.manual_seed(cfg["seed"])
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    splits = {"train": ids[:n], "val": ids[n:]}
    B, T = cfg["batch_size"], cfg["block_size"]

    def get_batch(split):
        data = splits[split]
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    model = ref.GPT(ref.GPTConfig(vocab_size=len(chars), block_size=T, n_layer=cfg["n_layer"],
                                  n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                  dropout=cfg["dropout"], bias=cfg["bias"]))
    opt = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"],
                                     (cfg["beta1"], cfg["beta2"]), "cpu")

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(cfg["eval_iters"])
            for k in range(cfg["eval_iters"]):
                _, loss = model(*get_batch(split))
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it):
        lr, warmup, decay, min_lr = (cfg["learning_rate"], cfg["warmup_iters"],
                                     args.max_iters, cfg["min_lr"])
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        ratio = (it - warmup) / (decay - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    evals, X, Y, it = [], *get_batch("train"), 0
    while True:
        for group in opt.param_groups:
            group["lr"] = get_lr(it)
        if it % cfg["eval_interval"] == 0 or it == args.max_iters:
            losses = estimate_loss()
            evals.append({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
        _, loss = model(X, Y)
        X, Y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        it += 1
        if it > args.max_iters:
            break
    return {"loop_s": time.perf_counter() - t0, "final_iter": evals[-1]["iter"],
            "val_loss": evals[-1]["val_loss"], "evals": evals, "torch": torch.__version__}


def run_nanogpt(args):
    argv = [os.path.abspath(__file__), "--child", "--data", args.data,
            "--max-iters", str(args.max_iters), "--threads", str(args.threads)]
    t0, ticks = time.perf_counter(), common.cpu_ticks()
    result = common.run_child(argv, common.thread_env(args.threads))
    result["wall_s"] = time.perf_counter() - t0
    result["steal_pct"] = common.steal_percent(ticks, common.cpu_ticks())
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        common.set_threads(args.threads)
        common.emit_result(nanogpt_child(args))
        return 0
    load_before = common.load_average()
    results = {"ours": run_ours(args)}
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            results["nanoGPT"] = run_nanogpt(args)
        except ImportError:
            print("(PyTorch is not installed: nanoGPT's run is skipped)")
    meta = {**common.machine_info(), "threads": args.threads, "max_iters": args.max_iters,
            "data": os.path.basename(args.data), "load_before": load_before,
            "load_after": common.load_average()}
    print(f"# End to end: nanoGPT's CPU Shakespeare run, {args.max_iters} iterations, "
          f"{args.threads} threads\n")
    print(f"machine: {meta['cpu']}, nproc {meta['nproc']}; code at {meta['git']}; "
          f"load average before {load_before}, after {meta['load_after']}\n")
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "error", "-", "-", "-"])
            print(f"{name}: {r['error']}", file=sys.stderr)
        else:
            rows.append([name, common.fmt(r["wall_s"], 1), r["final_iter"], f"{r['val_loss']:.4f}",
                         common.fmt(r.get("steal_pct"), 0)])
    print(common.markdown_table(["run", "wall s", "last eval at iter", "val loss",
                                 "host steal %"], rows))
    common.write_json(args.json, {"meta": meta, "results": results})
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
