"""How much memory a run needs, from its settings alone: checked before any array exists.

A training step's peak is in the backward pass, when everything below is alive at once:

    runtime              the interpreter, NumPy and the BLAS's buffers (host memory only)
    weights              every parameter, n floats
    gradients            the trainable parameters' (and, with nn.DataParallel, the twin's)
    optimizer moments    AdamW's m and v: 2 per trainable parameter (1/N of them per rank
                         with ZeRO-1 on N ranks)
    activations          what the forward graph keeps until backward, per position (there
                         are B*T positions per micro-batch), in floats:
        each block that records a graph (is trainable, or has a trainable block above it):
            28 C + nh T:  ln_1's output and normalised input 2C; q, k, v 3C and their
            head-major copies 3C; the heads' output and its token-major copy 2C; attn_out
            C; the residual sum C; ln_2 2C; mlp_in 4C; GELU's output 4C and its saved tanh
            4C; mlp_out C; the residual sum C; and the softmax weights, nh T
            with dropout, each of the three dropouts' output and its one-byte mask:
            (nh T + 2C) (itemsize + 1) bytes
        a frozen block below every trainable one records nothing: its arrays are freed as
            soon as the next block has read them
        the ends: the embeddings and their sum 2C, ln_final 2C, the logits and the loss's
            saved probabilities 2V (a classifier: n_classes instead of V)
        backward's own arrays while it runs: about 14 C + V
    batch                a step's token ids: k micro-batches of B windows of T + 1 tokens,
                         drawn at once (data.get_batch: the int64 index, the ids, the
                         int64 copy: 18 bytes a token)
    reduce buffers       across ranks, nn.GradientReducer's buckets (P values: every trained
                         value once, bucket_mb at a time) or ZeroAdamW's flat buffer and its
                         shard of the averaged gradient (P + P/N); the batch is per rank

Measured against peak RSS (tests/test_memory_estimate.py) at three sizes: within 25%, and
on the high side. benchmarks/README.md has the numbers.
"""
import os

from .cli import UserError

RUNTIME_CPU = 64 << 20      # bytes: python, NumPy, tqdm, OpenBLAS's buffers (measured: ~40-60 MB)


def trainable_parameters(config, trainable="all", lora_rank=0, lora_targets=("attn", "mlp"),
                         n_classes=None):
    """How many of a GPT's parameters train: all, the last block + ln_final (+ the
    classification head), the head alone, or LoRA's A and B (r (in + out) per Linear; an
    unknown target counts nothing here: nn.apply_lora names it when the model is built)."""
    C, L, bias = config.n_embd, config.n_layer, int(config.bias)
    head = C * n_classes if n_classes else 0              # the classifier's head, bias-free
    block = 12 * C * C + 2 * C + 11 * C * bias             # as GPTConfig.num_parameters
    if trainable == "all":
        return config.num_parameters() + head
    if trainable == "last_block":
        return block + C * (1 + bias) + head
    if trainable == "head":
        return head
    if trainable == "lora":
        per_layer = {"attn": 4 * 2 * C, "mlp": (C + 4 * C) * 2}     # (in + out) per Linear
        return L * lora_rank * sum(per_layer.get(t, 0) for t in set(lora_targets)) + head
    raise ValueError(f"trainable must be all, last_block, head or lora, not {trainable!r}")


def estimate(config, batch_size, itemsize=4, trainable="all", lora_rank=0,
             lora_targets=("attn", "mlp"), n_classes=None, parallel=False, n_ranks=1, zero=0,
             bucket_mb=25, model="gpt", device="cpu", accumulation=1):
    """Bytes by part (see the module docstring) for one training step of a GPT of shape
    `config` (a GPTConfig: its block_size is T) on `accumulation` micro-batches of
    batch_size."""
    V, T, C, nh, L = (config.vocab_size, config.block_size, config.n_embd, config.n_head,
                      config.n_layer)
    positions = batch_size * T
    if model == "bigram":
        n = trained = V * V
        acts = positions * 3 * V * itemsize                  # logits, probabilities, grad
    else:
        n = config.num_parameters() + (C * n_classes if n_classes else 0)
        trained = trainable_parameters(config, trainable, lora_rank, lora_targets, n_classes)
        graph_blocks = {"all": L, "lora": L, "last_block": 1, "head": 0}[trainable]
        per_block = (28 * C + nh * T) * itemsize
        if config.dropout > 0:
            per_block += (nh * T + 2 * C) * (itemsize + 1)
        outputs = n_classes if n_classes else V
        ends = (4 * C + 2 * outputs) * itemsize
        backward = (14 * C + outputs) * itemsize if trained else 0
        acts = positions * (graph_blocks * per_block + ends + backward)
    moments = 2 * trained // (n_ranks if zero else 1)
    parts = {"runtime": RUNTIME_CPU if device == "cpu" else 0,
             "weights": n * itemsize,
             "gradients": trained * itemsize * (2 if parallel else 1),
             "optimizer moments": moments * itemsize,
             "activations": acts,
             "batch": accumulation * batch_size * (T + 1) * 18}
    if n_ranks > 1 or zero:     # a reducer's buckets (P); ZeRO's flat buffer P + shard P/N
        parts["reduce buffers"] = (trained + (trained // n_ranks if zero else 0)) * itemsize
    return parts


def available(device):
    """Bytes free on the device: MemAvailable on Linux, CuPy's free memory on a GPU."""
    if device == "cuda":
        import cupy
        free, _ = cupy.cuda.runtime.memGetInfo()
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def describe(parts):
    """'123.4 MiB (weights 10.0 MiB, ...)': the total and every part."""
    detail = ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in parts.items())
    return f"{sum(parts.values()) / 2**20:,.1f} MiB ({detail})"


def advice(parts, lower):
    """Which setting to lower, from the biggest part: `lower` maps 'activations', 'model'
    and optionally 'batch' to the settings that shrink them ('--batch_size (32) or ...');
    weights, gradients and moments are the model's."""
    biggest = max((k for k in parts if k != "runtime"), key=parts.get)
    return lower.get(biggest) or lower["model"]


def check(parts, device, lower, free=None):
    """Refuse (UserError) a run whose estimate does not fit in the device's free memory,
    with the estimate by part and what to lower; otherwise return the total."""
    total = sum(parts.values())
    free = available(device) if free is None else free
    if total > free:
        raise UserError(f"this run needs about {total / 2**30:.2f} GiB but only "
                        f"{free / 2**30:.2f} GiB is free on {device} (estimate "
                        f"{describe(parts)}): lower {advice(parts, lower)}")
    return total
