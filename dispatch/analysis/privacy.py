"""The one rule for small cells: exports never show a figure built from 1..k-1 requests.

The record holds no personal data (alerts describe places and signals), but a cell with a
handful of requests at one station and hour can still point at one person's habits. So every
exported table (CSV, Parquet, the HTML report's tables and heat maps) blanks the figures of
any row whose request count is at least 1 and below k (default 5), and marks the row
`suppressed`. Zero is shown: it discloses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

NOTICE = ("Cells with 1 to {k_minus_1} requests are suppressed (shown blank, `suppressed` = "
          "true): no exported figure is built from fewer than {k} requests.")


def notice(k: int) -> str:
    """The sentence every export carries about suppression."""
    return NOTICE.format(k=k, k_minus_1=k - 1)


def suppress(frame: pd.DataFrame, k: int, *, count: str = "requests",
             figures: Sequence[str] = ()) -> pd.DataFrame:
    """A copy with `count` and `figures` blanked where 0 < count < k, plus `suppressed`."""
    out = frame.copy()
    small = (out[count] > 0) & (out[count] < k)
    for column in (count, *figures):
        kind = out[column].dtype.kind
        dtype = "Int64" if kind in "iub" else "Float64" if kind == "f" else object
        out[column] = out[column].astype(dtype).mask(small)
    out["suppressed"] = small.to_numpy()
    return out
