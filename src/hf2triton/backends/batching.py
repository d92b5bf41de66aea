"""Batch planning: which texts share one ONNX Runtime call, and the feeds of a packed call.

Two plans, both over texts sorted by length. Padded (:func:`plan_batches`): one text per
row, sub-batches cut where padding would cost more than another call. Packed
(:func:`pack_calls`, for a packed graph: ``hf2triton.export.packing``): several short
texts share a row and attend only to themselves, where that costs fewer positions than
padding (:func:`pack_call`). :func:`packed_batch` writes a packed call's feeds and
:func:`unpack` turns its per-token output back into padded rows.

Pure numpy: the fused model and the ONNX Runtime model step both plan with it, and a
served version folder holds a copy beside them.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

# What one extra ONNX Runtime call costs, in padded positions: the fixed cost of a call
# divided by the cost of one position, fitted on all-MiniLM-L6-v2 with
# ``perf/batch_cost.py`` (2.5 ms + 0.22 ms per position on one thread = 11; 2.0 ms +
# 0.125 ms on two = 16). Cutting where padding costs more than this is what lets a
# queue of mixed lengths run near the length-sorted ceiling.
CALL_COST_POSITIONS = 16
_NEVER = np.iinfo(np.int64).max  # the cost of a sub-batch over the limits (np.iinfo is slow to build per row)


def plan_batches(lengths: np.ndarray, max_batch_tokens: int, max_rows: int = 0,
                 call_cost: int = CALL_COST_POSITIONS) -> list[np.ndarray]:
    """Row indices of the cheapest sub-batches: rows sorted by length and cut where padding
    would cost more than another call.

    A sub-batch costs ``call_cost`` plus its rows × its longest row (positions run,
    padding included); the cuts minimise the total (dynamic programming over the sorted
    rows). Each sub-batch holds at most ``max_batch_tokens`` positions (a longer row runs
    alone) and ``max_rows`` rows (0 = no limit).
    """
    order = np.argsort(lengths, kind="stable")
    ordered = np.asarray(lengths, dtype=np.int64)[order]
    count = len(ordered)
    best = np.zeros(count + 1, dtype=np.int64)  # best[j]: cheapest cost of the first j rows
    start = np.zeros(count + 1, dtype=np.int64)  # where the last sub-batch of that plan starts
    for end in range(1, count + 1):
        width = int(ordered[end - 1])  # sorted: the longest row of any sub-batch ending here
        first = np.arange(end)  # candidate starts of the last sub-batch
        rows = end - first
        allowed = (rows * width <= max_batch_tokens) | (rows == 1)
        if max_rows:
            allowed &= rows <= max_rows
        cost = np.where(allowed, best[:end] + call_cost + rows * width, _NEVER)
        start[end] = int(np.argmin(cost))
        best[end] = cost[start[end]]
    batches, end = [], count
    while end > 0:
        batches.append(order[start[end]:end])
        end = int(start[end])
    return batches[::-1]


# ------------------------------------------------------------------ packed rows

# A packed graph (``model.packed.onnx``, hf2triton.export.packing) takes several texts per
# row: each token carries its position within its text and its text's number in the row
# (segment, from 1; 0 = padding), and attends only to its own text's tokens. The linear
# layers then run on real tokens, with no padding between texts of different lengths.
# Measured on all-MiniLM-L6-v2, one thread, whole pipeline, random texts: 4 of them cost
# 7.3 ms of CPU each packed against 8.0 in the padded plan, 8 cost 7.4 against 8.0; from
# 32 on both are 7.2-7.4 (``perf/packing.py``).
PACKED_INPUTS = ("input_ids", "position_ids", "segment_ids")
# A classifier's or reranker's packed graph also takes each text's first token as a flat
# index into rows × width, in call order, and answers one row per text (its head reads
# that token); a pair model's also takes the token types (which text of the pair).
TEXT_STARTS = "text_starts"
TOKEN_TYPES = "token_type_ids"

# What a packed row of width W costs, in positions: W · (1 + W / ROW_ATTENTION). Attention
# and its softmax grow with the row, so long rows of short texts are not free: 32 random
# texts cost 7.5-7.9 ms each in rows of ~128 tokens against 7.2-7.3 in length-sorted padded
# sub-batches; fitted (300, 500, 900 tried) so that neither plan loses to the other at 2-64 texts.
ROW_ATTENTION = 500
PACK_WIDTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # row widths tried


def row_cost(rows: int, width: int) -> float:
    return rows * width * (1 + width / ROW_ATTENTION)


def call_width(rows: list[list[int]], lengths: np.ndarray) -> int:
    """Positions per row of a call: its fullest row (at least 1)."""
    return max(max(sum(int(lengths[i]) for i in row) for row in rows), 1)


def balanced_rows(indices: list[int], lengths: np.ndarray, count: int) -> list[list[int]]:
    """``indices`` (longest first) in ``count`` rows, each text into the least-filled row."""
    heap = [(0, row) for row in range(count)]
    rows: list[list[int]] = [[] for _ in range(count)]
    for index in indices:
        filled, row = heapq.heappop(heap)
        rows[row].append(index)
        heapq.heappush(heap, (filled + int(lengths[index]), row))
    return [row for row in rows if row]


def pack_call(indices: list[int], lengths: np.ndarray, row_tokens: int, max_batch_tokens: int = 0,
              call_cost: int = CALL_COST_POSITIONS) -> list[list[list[int]]]:
    """The cheapest way to run texts ``indices`` (longest first) on a packed graph: packed
    rows of at most ``row_tokens`` in one call, or the padded plan (:func:`plan_batches`:
    one text per row, sub-batches of similar lengths), whichever costs fewer positions."""
    subset = np.asarray(lengths, dtype=np.int64)[indices]
    padded = [[[indices[int(k)]] for k in batch] for batch in plan_batches(subset, max_batch_tokens or 1 << 62)]
    plan, best = padded, sum(call_cost + row_cost(len(call), call_width(call, lengths)) for call in padded)
    total = int(subset.sum())
    # Each width tried gives a row count; short calls give the same count for many widths.
    for count in sorted({min(len(indices), max(1, -(-total // w))) for w in PACK_WIDTHS if w <= row_tokens},
                        reverse=True):  # narrowest width first, as before: ties keep the same plan
        rows = balanced_rows(indices, lengths, count)
        cost = call_cost + row_cost(len(rows), call_width(rows, lengths))
        if cost < best:
            best, plan = cost, [rows]
    return plan


def pack_calls(lengths: np.ndarray, row_tokens: int, max_batch_tokens: int = 0) -> list[list[list[int]]]:
    """Text indices per row per call of a packed graph.

    Texts longest first are cut into groups of at most ``max_batch_tokens`` tokens (0: one
    group; a longer text is a group alone); each group runs as :func:`pack_call` finds
    cheapest. ``row_tokens`` below the narrowest width tried keeps one text per row.
    """
    order = [int(i) for i in np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")]
    groups: list[list[int]] = []
    total = 0
    for index in order:
        if not groups or (max_batch_tokens and total + int(lengths[index]) > max_batch_tokens):
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += int(lengths[index])
    return [call for group in groups for call in pack_call(group, lengths, row_tokens, max_batch_tokens)]


@dataclass(frozen=True)
class PackedBatch:
    """A packed graph's feeds for one call, and where each text lies in them (row, start)."""

    feeds: dict[str, np.ndarray]
    places: dict[int, tuple[int, int]]
    texts: list[int]  # the call's texts in row order: the order of per-text outputs

    def feeds_for(self, names: Collection[str]) -> dict[str, np.ndarray]:
        """The feeds a graph with inputs ``names`` takes."""
        return {name: self.feeds[name] for name in names}


def packed_batch(token_ids: list, rows: list[list[int]], pad_id: int = 0,
                 type_ids: list | None = None) -> PackedBatch:
    """Feeds for ``rows`` (text indices into ``token_ids``, each a sequence of token ids);
    with ``type_ids`` (each text's token types), ``TOKEN_TYPES`` too."""
    width = max(max(sum(len(token_ids[i]) for i in row) for row in rows), 1)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    segments = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64) if type_ids is not None else None
    places, texts, starts = {}, [], []
    for r, row in enumerate(rows):
        start = 0
        for segment, index in enumerate(row, start=1):
            length = len(token_ids[index])
            ids[r, start : start + length] = token_ids[index]
            positions[r, start : start + length] = np.arange(length)
            segments[r, start : start + length] = segment
            if types is not None:
                types[r, start : start + length] = type_ids[index]
            places[index] = (r, start)
            texts.append(index)
            starts.append(r * width + start)
            start += length
    feeds = {"input_ids": ids, "position_ids": positions, "segment_ids": segments,
             TEXT_STARTS: np.array(starts, dtype=np.int64)}
    if types is not None:
        feeds[TOKEN_TYPES] = types
    return PackedBatch(feeds, places, texts)


def unpack(output: np.ndarray, batch: PackedBatch, lengths: np.ndarray,
           texts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A packed call's per-token ``output`` [rows, width, ...] as padded rows for ``texts``,
    [len(texts), longest, ...], with their attention mask."""
    width = max(int(max(lengths[i] for i in texts)), 1)
    padded = np.zeros((len(texts), width, *output.shape[2:]), dtype=output.dtype)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for k, index in enumerate(texts):
        row, start = batch.places[index]
        length = int(lengths[index])
        padded[k, :length] = output[row, start : start + length]
        mask[k, :length] = 1
    return padded, mask
