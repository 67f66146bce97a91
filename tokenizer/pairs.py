"""The two list operations byte-pair encoding is made of: merge one pair, and apply merges by rank.

Both work on one pre-token chunk at a time, as a list of token ids. Training (train_bpe.py)
calls `merge` once per learned pair on every chunk that contains it; encoding (bpe.py) calls
`apply_merges` once per distinct chunk.
"""
from itertools import repeat

NOT_A_MERGE = 1 << 62               # the priority of a pair that is not a learned merge


def merge(ids, pair, new_id):
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    ids=[1, 2, 3, 1, 2], pair=(1, 2), new_id=4 -> [4, 3, 4]
    Overlaps resolve leftmost first: ids=[7, 7, 7], pair=(7, 7), new_id=9 -> [9, 7]
    """
    first, second = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == first and i + 1 < n and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_priorities(merges):
    """Pack each merge's rank and result into one int, the key `apply_merges` minimizes.

    merges: (int, int) -> int, in rank order. Returns (int, int) -> rank * 2**32 + new id, so
    the smallest key is the lowest rank and `key & 0xFFFFFFFF` is the id it makes:
    {(1, 2): 4, (4, 3): 5} -> {(1, 2): 0 * 2**32 + 4, (4, 3): 1 * 2**32 + 5}
    (One dict lookup per pair instead of two: a third faster than separate rank and id dicts.)
    """
    return {pair: (rank << 32) | new_id for rank, (pair, new_id) in enumerate(merges.items())}


def apply_merges(ids, priorities):
    """Encode one chunk exactly as GPT-2's `bpe()` does: while any adjacent pair is a known
    merge, merge the one with the lowest rank (everywhere it occurs, left to right), then
    look again. tiktoken merges one occurrence at a time; for a trained vocabulary, where a
    merge's result only ever takes part in later merges, the two give the same ids.

    priorities: (int, int) -> int, from merge_priorities (lowest = applied first)

    With merges {(1, 2): 4, (4, 3): 5} (ranks 0 and 1):
    [1, 2, 3, 1, 2] -> (1, 2) has rank 0 -> [4, 3, 4] -> (4, 3) has rank 1 -> [5, 4]
    """
    ids = list(ids)
    while len(ids) >= 2:
        # priorities.get(pair, NOT_A_MERGE) for each adjacent pair, in C
        keys = list(map(priorities.get, zip(ids, ids[1:]), repeat(NOT_A_MERGE)))
        best = min(keys)
        if best == NOT_A_MERGE:
            break                    # no adjacent pair is a learned merge: done
        first = keys.index(best)     # the leftmost copy of the lowest-rank pair
        new_id = best & 0xFFFFFFFF
        if keys.count(best) == 1:
            ids[first:first + 2] = [new_id]              # the common case, done in C
        else:
            ids = merge(ids, (ids[first], ids[first + 1]), new_id)
    return ids
