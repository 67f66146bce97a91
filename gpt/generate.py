"""Sampling text from a GPT, with or without the key/value cache.

Uncached (the textbook loop): every step runs the whole context through the model and
keeps the last position's logits: O(T) work per token, O(T^2) overall.
Cached: the prompt is run once ("prefill") and each block keeps its keys and values; then
each step runs only the newest token, whose query attends to the cached keys.

Positions are learned absolute embeddings, so when the context grows past block_size the
window must shift: every cached key was computed at a position that has now moved, and it
moves again at every later step. From then on the cached loop runs exactly what the
uncached loop does, the last block_size tokens without a cache (a cache refilled every step
would only add bookkeeping), so cached and uncached generation give the same tokens.
"""
import numpy as np

from tensor import Tensor, backend, no_grad


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None,
             use_cache=True, on_token=None, stop_token=None):
    """idx (B, T) ints -> (B, T + n) ints (a NumPy array), n = max_new_tokens at most.

    temperature 0 means greedy (argmax); top_k keeps the k most likely tokens; top_p keeps
    the smallest set of tokens whose probabilities add up to at least top_p. rng: a
    numpy Generator (or a seed) so sampling is reproducible. on_token(column) is called
    with each new (B,) column as soon as it exists (for streaming to a terminal).
    stop_token: an id (e.g. <|endoftext|>'s) that ends generation once every row has
    produced it (that column included; rows that stopped earlier keep drawing tokens,
    which the caller cuts at their first stop_token).
    """
    _check_sampling(temperature, top_k, top_p)
    rng = np.random.default_rng(rng)
    idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"generate needs token ids of shape (B, T) with T >= 1, got {idx.shape}")
    block_size = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            caches, stopped = None, None
            for _ in range(max_new_tokens):
                if not use_cache or idx.shape[1] > block_size:   # (the window slides)
                    logits, _ = model(idx[:, -block_size:], last_only=True)
                elif caches is None:
                    caches = model.new_caches()          # prefill: the prompt, once
                    logits, _ = model(idx, caches=caches, last_only=True)
                else:
                    logits, _ = model(idx[:, -1:], caches=caches, last_only=True)
                column = sample(backend.to_numpy(logits.data[:, -1, :]), temperature,
                                top_k, top_p, rng)       # (B,)
                idx = np.concatenate([idx, column[:, None]], axis=1)
                if on_token is not None:
                    on_token(column)
                if stop_token is not None:
                    hit = column == stop_token                 # (B,)
                    stopped = hit if stopped is None else stopped | hit
                    if stopped.all():
                        break
    finally:
        model.train(was_training)
    return idx


def sample(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token id per row of logits (B, V): greedy, or drawn after temperature/top-k/top-p."""
    _check_sampling(temperature, top_k, top_p)
    logits = logits.astype(np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1)
    rng = np.random.default_rng(rng)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -int(top_k)][:, None]     # k-th largest per row
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")          # most likely first
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs    # mass ranked above each
        sorted_probs[before >= top_p] = 0                           # keep until top_p reached
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_probs, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)                                 # (B, V)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=-1), probs.shape[-1] - 1)


def _check_sampling(temperature, top_k, top_p):
    if not temperature >= 0:                          # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
