"""Embedding lookup: rows of a weight table picked by integer ids, and its scatter-add backward.

Forward:  y[..., :] = W[ids[...], :]                (ids (...), W (V, C) -> y (..., C))
Backward: dW[v, :] = sum of dy[..., :] over every position where ids == v

The backward is a scatter-add: an id used k times receives the sum of k gradient rows.
For a small vocabulary it is one matrix product, onehot(ids)^T @ dy. Otherwise, on NumPy
we sort the ids so equal ids sit together and sum each run with one `np.add.reduceat`
(fast, unlike `np.add.at`); on CuPy, `cupyx.scatter_add` does it on the GPU.
"""
import numpy as np

from .tensor import Tensor, make


def embedding(ids, weight):
    """y = W[ids];   dW = onehot(ids)^T @ dy, i.e. dW[v] = sum of dy[i] over every i with ids[i] = v

    ids (...) -> y (..., C). The backward is scatter_add_rows below.
    """
    ids = check_ids(ids, weight)
    V, C = weight.shape
    y = weight.data[ids]                                          # (..., C)

    def backward(dy):
        flat_ids, rows = ids.reshape(-1), dy.reshape(ids.size, C)  # (N,), (N, C)
        return (scatter_add_rows(weight.xp, V, flat_ids, rows),)  # (V, C)

    # weight is the only parent (ids get no gradient): for a frozen weight (requires_grad
    # False) make records no backward, so dW is never computed.
    return make(y, (weight,), "embedding", backward)


def check_ids(ids, weight):
    """ids as an integer array on weight's device, each in [0, V) (else TypeError/IndexError)."""
    ids = ids.data if isinstance(ids, Tensor) else weight.xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding ids must be integers, got dtype {ids.dtype}")
    V = weight.shape[0]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise IndexError(f"embedding ids must be in [0, {V}), got values from "
                         f"{int(ids.min())} to {int(ids.max())}")
    return ids


ONE_HOT_MAX_ROWS = 1024   # up to this vocabulary size the scatter-add is a matmul,
ONE_HOT_MAX_ELEMENTS = 1 << 22   # as long as the (N, V) one-hot stays small (16 MiB float32)


def one_hot_is_small(num_rows, n):
    return num_rows <= ONE_HOT_MAX_ROWS and n * num_rows <= ONE_HOT_MAX_ELEMENTS


def scatter_add_rows(xp, num_rows, ids, rows):
    """out = onehot(ids)^T @ rows: out[v] = sum of rows[i] over every i with ids[i] = v.

    ids (N,), rows (N, C) -> out (num_rows, C). Two ways to the same sums: the matrix
    product itself while the (N, V) one-hot is small; else (NumPy) sort the ids so equal
    ids sit together and add each run with np.add.reduceat, or (CuPy) cupyx.scatter_add.
    """
    out = xp.zeros((num_rows, rows.shape[1]), dtype=rows.dtype)       # (V, C)
    if ids.size == 0:
        return out
    if one_hot_is_small(num_rows, ids.size):
        # Small vocabulary: out += onehot(ids)^T @ rows, one (V, N) @ (N, C) matrix product.
        onehot = xp.zeros((ids.size, num_rows), dtype=rows.dtype)   # (N, V)
        onehot[xp.arange(ids.size), ids] = 1
        out += onehot.T @ rows                                      # (V, N) @ (N, C)
        return out
    add_rows_at(xp, out, ids, rows)
    return out


def add_rows_at(xp, out, ids, rows):
    """out[ids[i]] += rows[i] for every i, an id used k times getting all k rows.

    NumPy: sort the ids so equal ids sit together, sum each run with one np.add.reduceat
    (fast, unlike np.add.at), then add each sum at its id (now unique). CuPy: scatter_add."""
    if ids.size == 0:
        return
    if xp is np:
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        run_starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        out[sorted_ids[run_starts]] += np.add.reduceat(rows[order], run_starts, axis=0)
    else:
        import cupyx
        cupyx.scatter_add(out, ids, rows)
