"""The two numbers every parity check reports, computed in float64 (numpy only, so the export's
gates, the benchmark's accuracy column and user code measure the same way):

- relative error: max |actual - expected| / max |expected| over the whole tensor;
- minimum row cosine: the worst cosine similarity between matching vectors along the last axis
  (every token of `last_hidden_state`, every embedding of `pooler_output`).
"""

from __future__ import annotations

import numpy as np


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else float(np.abs(actual).max())


def min_row_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    """The smallest cosine between matching rows; a zero row scores 0."""
    a = np.asarray(actual, np.float64).reshape(-1, np.shape(actual)[-1])
    e = np.asarray(expected, np.float64).reshape(-1, np.shape(expected)[-1])
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1)
    cos = np.where(denom > 0, (a * e).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
    return float(cos.min())
