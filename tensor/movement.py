"""Movement ops: they rearrange, select or join elements without doing arithmetic.

Their backwards move the gradient back to where each element came from: reshape undoes a
reshape, transpose undoes a transpose, indexing scatters the gradient into a zero array of
the input's shape, cat splits it, split joins it.
"""
from .elementwise import unbroadcast
from .tensor import Tensor, lift, make


def reshape(a, *new_shape):
    """y = a viewed as new_shape;   da = dy viewed as a.shape

    reshape(2, 3) and reshape((2, 3)) both work, as in NumPy and PyTorch; -1 is inferred.
    """
    if len(new_shape) == 1 and isinstance(new_shape[0], (tuple, list)):
        new_shape = tuple(new_shape[0])
    try:
        y = a.data.reshape(new_shape)
    except ValueError:
        raise ValueError(f"cannot reshape a tensor of shape {a.shape} ({a.size} elements) "
                         f"into {tuple(new_shape)}") from None
    return make(y, (a,), "reshape", lambda dy: (dy.reshape(a.shape),))


def transpose(a, ax1, ax2):
    """y = a with axes ax1 and ax2 swapped;   da = dy with ax1 and ax2 swapped back"""
    y = a.data.swapaxes(ax1, ax2)
    return make(y, (a,), "transpose", lambda dy: (dy.swapaxes(ax1, ax2),))


def permute(a, *axes):
    """y = a with axes reordered (y axis i = a axis axes[i]);   da = dy permuted by the inverse"""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if sorted(ax % a.ndim for ax in axes) != list(range(a.ndim)):
        raise ValueError(f"permute{tuple(axes)} is not a reordering of the {a.ndim} axes "
                         f"of a tensor of shape {a.shape}")
    inverse = [0] * a.ndim
    for i, ax in enumerate(axes):
        inverse[ax % a.ndim] = i
    y = a.data.transpose(axes)
    return make(y, (a,), "permute", lambda dy: (dy.transpose(inverse),))


def getitem(a, index):
    """y = a[index];   da = zeros like a, with dy added at the selected places

    Basic indexing (ints, slices, None, ...) selects each element at most once, so the
    gradient is assigned. Integer-array indexing may select an element several times
    (a[[0, 0]]), so the gradient is scatter-added.
    """
    index = _unwrap_index(index)
    advanced = any(hasattr(i, "shape") or isinstance(i, list) for i in
                   (index if isinstance(index, tuple) else (index,)))
    y = a.data[index]
    xp = a.xp

    def backward(dy):
        da = xp.zeros(a.shape, dtype=dy.dtype)
        if advanced:
            xp.add.at(da, index, dy)
        else:
            da[index] = dy
        return (da,)
    return make(y, (a,), "getitem", backward)


def masked_fill(a, mask, value):
    """y = value where mask, else a;   da = dy where not mask, else 0  (mask broadcasts)"""
    mask = mask.data if isinstance(mask, Tensor) else a.xp.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"masked_fill needs a boolean mask, got dtype {mask.dtype}")
    y = a.xp.where(mask, a.xp.asarray(value, dtype=a.dtype), a.data)

    def backward(dy):
        return (unbroadcast(a.xp.where(mask, 0, dy), a.shape),)
    return make(y, (a,), "masked_fill", backward)


def cat(tensors, axis=0):
    """y = [a1, a2, ...] joined along axis;   da_i = the slice of dy that a_i became"""
    tensors = _as_tensors(tensors)
    xp = tensors[0].xp
    ax = axis % tensors[0].ndim
    bounds = [0]
    for t in tensors:
        bounds.append(bounds[-1] + t.shape[ax])
    try:
        y = xp.concatenate([t.data for t in tensors], axis=ax)
    except ValueError:
        shapes = ", ".join(str(t.shape) for t in tensors)
        raise ValueError(f"cat along axis {axis}: shapes {shapes} differ off that axis") from None

    def backward(dy):
        lead = (slice(None),) * ax
        return tuple(dy[lead + (slice(lo, hi),)] for lo, hi in zip(bounds, bounds[1:]))
    return make(y, tuple(tensors), "cat", backward)


def stack(tensors, axis=0):
    """y = [a1, a2, ...] stacked along a new axis;   da_i = dy indexed at i on that axis"""
    tensors = _as_tensors(tensors)
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack needs tensors of one shape, got {sorted(shapes)}")
    xp = tensors[0].xp
    y = xp.stack([t.data for t in tensors], axis=axis)
    ax = axis % y.ndim

    def backward(dy):
        return tuple(xp.take(dy, i, axis=ax) for i in range(len(tensors)))
    return make(y, tuple(tensors), "stack", backward)


def split(a, size, axis=0):
    """y_k = k-th slice of a along axis;   da = each piece's dy put back in its slice

    Pieces of `size` along axis (the last may be smaller), or of the sizes in a list. Each
    piece is a getitem of `a`, so its gradient lands in its slice and the pieces' sum is da.
    """
    n = a.shape[axis]
    if isinstance(size, int) and size <= 0:
        raise ValueError(f"split size must be a positive integer, got {size}")
    sizes = [size] * (n // size) + ([n % size] if n % size else []) if isinstance(size, int) \
        else list(size)
    if sum(sizes) != n:
        raise ValueError(f"split sizes {sizes} do not add up to {n}, the length of axis {axis}")
    lead = (slice(None),) * (axis % a.ndim)
    pieces, start = [], 0
    for s in sizes:
        pieces.append(getitem(a, lead + (slice(start, start + s),)))
        start += s
    return pieces


def _unwrap_index(index):
    """Tensors used as indices become their arrays."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


def _as_tensors(tensors):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("need at least one tensor")
    first = next((t for t in tensors if isinstance(t, Tensor)), None)
    if first is None:
        tensors[0] = Tensor(tensors[0])
        first = tensors[0]
    return [lift(t, first) for t in tensors]
