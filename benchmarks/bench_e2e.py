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
the val loss at iteration 2000 twice:

    estimate   the run's own last evaluation: the mean over 20 random batches of 12 x 64
               tokens. Its spread from the batches alone is sd ~0.016 at this model, as
               large as the difference between the two runs that it is used to show.
    full val   each final model (the weights of that last evaluation: ours from its
               checkpoint, nanoGPT's in its child) scored on the WHOLE val split by one
               shared function, full_split_loss: every non-overlapping 64-token window,
               mean cross-entropy in float64 from the model's logits as a NumPy array.

Both use seed 1337; their full-val losses still differ by seed-to-seed spread (over 6 and
8 seeds, 1.909 vs 1.906), so one run each says "the same within noise", not "better".

    python benchmarks/bench_e2e.py                        # both, ~4 minutes
    python benchmarks/bench_e2e.py --max-iters 200        # a shorter run
"""
import argparse
import hashlib
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
    p.add_argument("--score", metavar="OUT_DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.score:
        return args
    if not os.path.isfile(args.data):
        p.error(f"no text file at {args.data}: pass --data PATH")
    if args.max_iters < 1:
        p.error("--max-iters must be >= 1")
    return args


# ----- one yardstick for every model: the whole val split ----------------------------------
def full_split_loss(logits_of, ids, block_size, batch_size=16):
    """Mean next-token cross-entropy over a whole split, and how many targets it averaged.

    The split is cut into every non-overlapping window of block_size tokens that has its
    targets, x = ids[s : s+T], y = ids[s+1 : s+T+1] for s = 0, T, 2T, ... (the last
    (len(ids) - 1) % T tokens are left out); logits_of(x) gives the model's logits (B, T, V)
    as a NumPy-convertible array for a batch of windows, and in float64

        loss = mean over windows and positions t of  logsumexp(logits[t]) - logits[t, y[t]]

    The same function scores every model compared, so only the logits differ."""
    import numpy as np
    ids = np.asarray(ids, dtype=np.int64)
    T = block_size
    n = (len(ids) - 1) // T                                  # whole windows
    total, count = 0.0, 0
    for first in range(0, n, batch_size):
        starts = T * np.arange(first, min(first + batch_size, n))
        x = ids[starts[:, None] + np.arange(T)]              # (B, T)
        y = ids[starts[:, None] + np.arange(T) + 1]          # (B, T)
        logits = np.asarray(logits_of(x), dtype=np.float64)  # (B, T, V)
        top = logits.max(axis=-1, keepdims=True)             # (B, T, 1)
        lse = top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))              # (B, T)
        picked = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]         # (B, T)
        total += float((lse - picked).sum())
        count += y.size
    if count == 0:
        raise ValueError(f"a split of {len(ids)} tokens has no window of {T} + 1 tokens")
    return total / count, count


def ids_digest(ids):
    """A short fingerprint of a split's token ids (do two runs score the same tokens?)."""
    import numpy as np
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def score_child(out_dir):
    """Our final model (the checkpoint in out_dir) on its run's whole val split."""
    common.like_the_cli()                # before NumPy loads; the fast kernels for speed
    from tensor import no_grad
    from tinygrad_gpt import checkpoint, data
    from tinygrad_gpt.sample import load_run
    info = checkpoint.load(out_dir)[0]
    run = info["train_config"]
    val = data.prepare(run["data"], run["tokenizer"], run["vocab_size"], quiet=True).val
    model, _ = load_run(out_dir, "cpu")
    model.eval()

    def logits_of(x):
        with no_grad():
            return model(x)[0].data        # (B, T, V)
    loss, tokens = full_split_loss(logits_of, val, model.config.block_size)
    return {"full_val_loss": loss, "full_val_tokens": tokens, "val_digest": ids_digest(val),
            "scored_iter": info["iter"]}


def run_score(out_dir, threads, root=common.ROOT):
    """score_child in a fresh process (the code under `root`): {'full_val_loss', ...}."""
    argv = [os.path.join(root, "benchmarks", "bench_e2e.py"), "--score", str(out_dir)]
    return common.run_child(argv, common.ours_env(threads))


def run_ours(args):
    with tempfile.TemporaryDirectory() as out_dir:
        argv = [sys.executable, "-m", "tinygrad_gpt.train", "--data", args.data,
                "--preset", "shakespeare-char-cpu", "--out_dir", out_dir, "--sample_tokens", "0",
                "--max_iters", str(args.max_iters), "--lr_decay_iters", str(args.max_iters)]
        t0, ticks = time.perf_counter(), common.cpu_ticks()
        proc = subprocess.run(argv, env=common.ours_env(args.threads), cwd=common.ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        steal = common.steal_percent(ticks, common.cpu_ticks())
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            evals = [r for r in map(json.loads, f) if "val_loss" in r]
        score = run_score(out_dir, args.threads)          # after the clock stopped
    return {"wall_s": wall, "final_iter": evals[-1]["iter"], "val_loss": evals[-1]["val_loss"],
            "steal_pct": steal, "evals": evals, **score}


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

    def logits_of(x):
        idx = torch.from_numpy(x)        # given targets, nanoGPT's forward returns the logits
        return model(idx, idx)[0].numpy()    # of every position (the loss is not used)

    @torch.no_grad()
    def score_full_val():                # the model the last estimate saw, as ours is scored
        model.eval()
        loss, tokens = full_split_loss(logits_of, splits["val"], T)
        model.train()
        return {"full_val_loss": loss, "full_val_tokens": tokens,
                "val_digest": ids_digest(splits["val"]), "scored_iter": it}

    evals, X, Y, it = [], *get_batch("train"), 0
    while True:
        for group in opt.param_groups:
            group["lr"] = get_lr(it)
        if it % cfg["eval_interval"] == 0 or it == args.max_iters:
            losses = estimate_loss()
            evals.append({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
            if it == args.max_iters:
                t_score = time.perf_counter()
                score = score_full_val()
                score["score_s"] = time.perf_counter() - t_score   # not part of the run
        _, loss = model(X, Y)
        X, Y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        it += 1
        if it > args.max_iters:
            break
    loop_s = time.perf_counter() - t0 - score["score_s"]
    return {"loop_s": loop_s, "final_iter": evals[-1]["iter"],
            "val_loss": evals[-1]["val_loss"], "evals": evals, "torch": torch.__version__,
            **score}


def run_nanogpt(args):
    argv = [os.path.abspath(__file__), "--child", "--data", args.data,
            "--max-iters", str(args.max_iters), "--threads", str(args.threads)]
    t0, ticks = time.perf_counter(), common.cpu_ticks()
    result = common.run_child(argv, common.thread_env(args.threads))
    # the full-val scoring ran inside the child: not part of the run's time (as for ours)
    result["wall_s"] = time.perf_counter() - t0 - result.get("score_s", 0.0)
    result["steal_pct"] = common.steal_percent(ticks, common.cpu_ticks())
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.score:
        common.set_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", "2")))
        common.emit_result(score_child(args.score))
        return 0
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
            rows.append([name, "error", "-", "-", "-", "-", "-"])
            print(f"{name}: {r['error']}", file=sys.stderr)
        else:
            full = r.get("full_val_loss")
            rows.append([name, common.fmt(r["wall_s"], 1), r["final_iter"], f"{r['val_loss']:.4f}",
                         "-" if full is None else f"{full:.4f}",
                         f"{r.get('full_val_tokens', 0):,}", common.fmt(r.get("steal_pct"), 0)])
    print(common.markdown_table(["run", "wall s", "last eval at iter",
                                 "val loss (20-batch estimate)", "val loss (full val split)",
                                 "val tokens scored", "host steal %"], rows))
    digests = {r.get("val_digest") for r in results.values() if "error" not in r}
    print("\nfull val split: every non-overlapping block_size window, one scoring function "
          "(full_split_loss) for both models; the 20-batch estimate's spread is sd ~0.016. "
          + ("Both scored the same val tokens." if len(digests) == 1 else
             f"The val tokens differ between the runs ({', '.join(map(str, digests))})."))
    common.write_json(args.json, {"meta": meta, "results": results})
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
