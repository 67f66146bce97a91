"""Checks and worked answers for docs/notebooks/06_finetuning.ipynb.

    1. check_mask_targets(fn): fn(prompt_ids, response_ids, end_id) -> (x, y), one
                               instruction item as the model trains on it: y = x shifted by
                               one, -100 where the target is a prompt token
                               (tinygrad_gpt/finetune_batches.py's `instruction_pair`)
    2. check_lora_parameters(n): the trainable parameters of LoRA rank 4 on the attention
                               projections (query, key, value, attn_out) of GPT-2 small
    3. check_lora_merge(fn):   fn(W, A, B, alpha, rank) -> the merged weight W'
                               (nn/lora.py's `LoRALinear.merge`)

Each check prints "Exercise N: not answered yet (hint)" and returns False for the
placeholder (None, or a function that returns None), raises AssertionError naming what is
wrong, or prints "Exercise N: correct" and returns True. The references are the project's
own functions.
"""
import numpy as np

from nn import LoRALinear, Linear
from ..finetune_batches import instruction_pair
from ..finetune_data import IGNORE_INDEX
from . import correct, not_answered

GPT2_SMALL = {"n_layer": 12, "n_embd": 768}      # exercise 2's model (V, block: no part)
LORA_RANK = 4


# Exercise 1: targets masked on the prompt

def answer_mask_targets(prompt_ids, response_ids, end_id):
    """ids = prompt + response + [end]; x = ids[:-1], y = ids[1:]; y[i] is the token after
    x[i], so y[i] is a prompt token for i < len(prompt) - 1: those become -100."""
    ids = list(prompt_ids) + list(response_ids) + [end_id]
    x, y = ids[:-1], ids[1:]
    masked = len(prompt_ids) - 1
    return x, [IGNORE_INDEX] * masked + y[masked:]


def wrong_mask_whole_prompt(prompt_ids, response_ids, end_id):
    """Masks one target too many: the first response token is never learned."""
    x, y = answer_mask_targets(prompt_ids, response_ids, end_id)
    return x, [IGNORE_INDEX] * len(prompt_ids) + y[len(prompt_ids):]


def wrong_mask_no_shift(prompt_ids, response_ids, end_id):
    """Targets not shifted: the model would learn to copy its input."""
    ids = list(prompt_ids) + list(response_ids) + [end_id]
    masked = len(prompt_ids)
    return ids, [IGNORE_INDEX] * masked + ids[masked:]


def wrong_mask_no_end(prompt_ids, response_ids, end_id):
    """Forgets the end token, so the model never learns to stop."""
    ids = list(prompt_ids) + list(response_ids)
    masked = len(prompt_ids) - 1
    return ids[:-1], [IGNORE_INDEX] * masked + ids[1:][masked:]


def check_mask_targets(fn):
    hint = "ids = prompt + response + [end_id]; x = ids[:-1]; y = ids[1:] with -100 where y " \
           "is a prompt token"
    if fn is None:
        return not_answered(1, hint)
    cases = [([5, 6, 7], [8, 9], 0), ([5], [8], 0), ([1, 2, 3, 4], [9], 99),
             ([10, 11], [12, 13, 14, 15], 1)]
    for prompt, response, end in cases:
        got = fn(list(prompt), list(response), end)
        if got is None:
            return not_answered(1, hint)
        assert len(got) == 2, f"Exercise 1: return (x, y), got {len(got)} values"
        x, y = (list(np.asarray(a).tolist()) for a in got)
        want_x, want_y, _ = instruction_pair(prompt, response, end, max_length=10_000,
                                             mask_prompt=True)
        where = f"prompt {prompt}, response {response}, end {end}"
        assert x == want_x, f"Exercise 1 ({where}): x is {x}, expected {want_x}"
        assert y == want_y, f"Exercise 1 ({where}): y is {y}, expected {want_y}"
    return correct(1)


# Exercise 2: LoRA's trainable parameters

def answer_lora_parameters():
    """Each wrapped Linear (out, in) trains A (r, in) and B (out, r): r (in + out). The four
    attention projections are C x C: 4 r (C + C) = 8 r C per block, 12 blocks:
    12 * 8 * 4 * 768 = 294,912 (0.24% of GPT-2 small's 124M)."""
    return GPT2_SMALL["n_layer"] * 8 * LORA_RANK * GPT2_SMALL["n_embd"]


def check_lora_parameters(n):
    hint = "a Linear (out, in) gets A (r, in) and B (out, r); count the attention's four " \
           "C x C projections in each of the 12 blocks"
    if n is None:
        return not_answered(2, hint)
    assert isinstance(n, (int, np.integer)) and not isinstance(n, bool), \
        f"Exercise 2: give a whole number, got {n!r}"
    want = answer_lora_parameters()
    C, L = GPT2_SMALL["n_embd"], GPT2_SMALL["n_layer"]
    assert n != L * 4 * C * C, "Exercise 2: that is the frozen W's count; LoRA trains A and B"
    assert n != want // 2, "Exercise 2: half the answer: count both A and B"
    assert n == want, f"Exercise 2: {n:,} trainable parameters; not the count of rank-" \
                      f"{LORA_RANK} adapters on 4 projections x {L} blocks (C = {C})"
    return correct(2)


# Exercise 3: merging LoRA into the weight

def answer_lora_merge(W, A, B, alpha, rank):
    """W' = W + (alpha / r) B @ A: (out, in) + (out, r) @ (r, in)."""
    return W + (alpha / rank) * (B @ A)


def wrong_lora_merge_no_scale(W, A, B, alpha, rank):
    return W + B @ A


def wrong_lora_merge_alpha(W, A, B, alpha, rank):
    return W + alpha * (B @ A)


def check_lora_merge(fn):
    hint = "the layer computes x W^T + (alpha / r) (x A^T) B^T = x (W + ...)^T"
    if fn is None:
        return not_answered(3, hint)
    rng = np.random.default_rng(7)
    for out_features, in_features, rank, alpha in ((5, 3, 2, 4.0), (6, 8, 4, 16.0), (3, 3, 1, 1.0)):
        linear = Linear(in_features, out_features, bias=True)
        layer = LoRALinear(linear, rank, alpha)
        layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape)     # trained B != 0
        W, A, B = (p.data.copy() for p in (layer.weight, layer.lora_A, layer.lora_B))
        got = fn(W.copy(), A.copy(), B.copy(), alpha, rank)
        if got is None:
            return not_answered(3, hint)
        got = np.asarray(got)
        want = layer.merge().weight.data
        assert got.shape == want.shape, \
            f"Exercise 3: W' has shape {got.shape}, expected {want.shape} (out, in)"
        err = float(np.abs(got - want).max())
        assert err < 1e-5, f"Exercise 3: W' is off by up to {err:.3g} from LoRALinear.merge " \
                           f"(rank {rank}, alpha {alpha})"
    return correct(3)


CHECKS = [
    (check_mask_targets, answer_mask_targets,
     [wrong_mask_whole_prompt, wrong_mask_no_shift, wrong_mask_no_end]),
    (check_lora_parameters, answer_lora_parameters(),
     [12 * 4 * 768 * 768, answer_lora_parameters() // 2, 12 * 6 * 4 * 2 * 768]),
    (check_lora_merge, answer_lora_merge, [wrong_lora_merge_no_scale, wrong_lora_merge_alpha]),
]
