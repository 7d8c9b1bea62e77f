"""Packing rows into batches by a token budget.

Rows are sorted by length, longest first, and each batch takes as many rows as fit in the budget
when padded to its first (longest) row: padding is to the batch's longest row, never the model's
max, and the device sees its largest batch first, so an out-of-memory shows at once.
"""

from __future__ import annotations

import numpy as np

from actors.errors import UserError


def pack_by_tokens(lengths: np.ndarray, budget: int, max_rows: int) -> list[np.ndarray]:
    """Row indices of each batch; together they cover every row once."""
    if budget <= 0 or max_rows <= 0:
        raise UserError("the device batch token budget and max rows per batch must be positive")
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        size = min(max_rows, max(1, budget // int(lengths[order[start]])))
        batches.append(order[start : start + size])
        start += size
    return batches
