"""Confidence intervals of means over images: one formula for tables, plots and BD-rate rows."""
from __future__ import annotations

import numpy as np


def t_half_width(n, sd, level: float = 0.95):
    """Half-width of the ``level`` Student-t interval of a mean of ``n`` values with sample
    standard deviation ``sd`` (arrays or scalars; ``n`` < 2 is given one degree of freedom, the
    caller decides what one value means)."""
    from scipy import stats

    n = np.asarray(n, dtype=float)
    return stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * np.asarray(sd, dtype=float) / np.sqrt(n)
