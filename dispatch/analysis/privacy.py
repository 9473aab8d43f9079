"""The one rule for small cells: exports never show a figure built from 1..k-1 requests.

The record holds no personal data (alerts describe places and signals), but a cell with a
handful of requests at one station and hour can still point at one person's habits. So every
exported table (CSV, Parquet, the HTML report's tables and heat maps) blanks the figures of
any row whose request count is at least 1 and below k (default 5), and marks the row
`suppressed`. Zero is shown: it discloses nothing. It is primary suppression only: a total
shown in another table, less a breakdown's shown cells, can give back a hidden count
(docs/analysis.md, "Privacy").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

NOTICE = ("Cells with 1 to {k_minus_1} requests are suppressed (shown blank, `suppressed` = "
          "true): no exported figure is built from fewer than {k} requests.")


def notice(k: int) -> str:
    """The sentence every export carries about suppression."""
    return NOTICE.format(k=k, k_minus_1=k - 1)


def suppress(frame: pd.DataFrame, k: int, *, count: str = "requests",
             figures: Sequence[str] = ()) -> pd.DataFrame:
    """A copy with `count` and `figures` blanked where 0 < count < k, plus `suppressed`."""
    counts = frame[count]
    small = ((counts > 0) & (counts < k)).to_numpy(dtype=bool)
    out = frame.copy(deep=False)  # copy-on-write: the columns below are new, the rest shared
    for column in (count, *figures):
        out[column] = _blanked(out[column], small)
    out["suppressed"] = small
    return out


def _blanked(column: pd.Series, small: np.ndarray) -> pd.Series | pd.api.extensions.ExtensionArray:
    """`column` as a nullable array (Int64, Float64, or object) with the `small` rows NA."""
    kind = column.dtype.kind
    if not isinstance(column.dtype, np.dtype):
        dtype = "Int64" if kind in "iub" else "Float64" if kind == "f" else object
        return column.astype(dtype).mask(small)
    if kind in "iub":
        return pd.arrays.IntegerArray(column.to_numpy(dtype=np.int64, copy=True), small.copy())
    if kind == "f":
        values = column.to_numpy(dtype=np.float64, copy=True)
        return pd.arrays.FloatingArray(values, small | np.isnan(values))
    return column.astype(object).mask(small)
