"""Fast kernel for tensor/embedding.py's op: the gradient kept as its rows, not a (V, C) array.

The reference backward returns dW as a dense (V, C) array: zeros, with the N rows of dy
added at their ids. In GPT-2 the token embedding is tied to the LM head, whose backward
has already made the weight's (V, C) gradient by the time the embedding's arrives, so the
dense form costs a (V, C) array of zeros and one more (V, C) add to put N rows in place
(about 45 ms of a GPT-2-small step here: V = 50,257, C = 768 is 154 MB, N = 512).

This kernel's backward returns a RowGradient instead: the same gradient as (ids, rows).
The engine's accumulate_grad (tensor/graph.py) adds it into an existing .grad in place,
row by row, or makes it dense (the reference's array, exactly) when it is the first.
Forward and the id checks are the reference's.
"""
from ..embedding import add_rows_at, check_ids, one_hot_is_small, scatter_add_rows
from ..tensor import make


class RowGradient:
    """The (V, C) gradient that is zero except dW[ids[i]] += rows[i]: ids (N,), rows (N, C)."""

    def __init__(self, xp, shape, ids, rows):
        self.xp, self.shape, self.ids, self.rows = xp, shape, ids, rows
        self.dtype = rows.dtype

    def dense(self):
        """The (V, C) array itself, computed as the reference backward computes it."""
        return scatter_add_rows(self.xp, self.shape[0], self.ids, self.rows)

    def add_into(self, grad):
        """grad += this gradient, in place: only the rows at ids, unless the vocabulary is
        small enough for the reference's one-hot product, which is then added whole (so
        the sums round exactly as the reference's)."""
        if one_hot_is_small(self.shape[0], self.ids.size):
            grad += self.dense()
        else:
            add_rows_at(self.xp, grad, self.ids, self.rows)


def embedding(ids, weight):
    """tensor.embedding.embedding, whose backward returns dW as a RowGradient (when weight
    is a leaf: only a leaf's gradient goes to accumulate_grad, see Tensor.backward)."""
    ids = check_ids(ids, weight)
    V, C = weight.shape
    y = weight.data[ids]                                          # (..., C)
    leaf = weight._backward is None

    def backward(dy):
        flat_ids, rows = ids.reshape(-1), dy.reshape(ids.size, C)  # (N,), (N, C)
        if leaf:
            return (RowGradient(weight.xp, (V, C), flat_ids, rows),)
        return (scatter_add_rows(weight.xp, V, flat_ids, rows),)  # (V, C)

    # weight is the only parent (ids get no gradient): for a frozen weight (requires_grad
    # False) make records no backward, so dW is never computed.
    return make(y, (weight,), "embedding", backward)
