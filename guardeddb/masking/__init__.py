"""Masking: operators, value detectors, and plans that mask rows in-process."""

from __future__ import annotations

from ..errors import MaskingError
from .detectors import DETECTORS, Scanner
from .operators import OPERATORS, Operator
from .plan import ColumnRule, Masking, MaskPlan, MaskRun

__all__ = [
    "DETECTORS",
    "OPERATORS",
    "ColumnRule",
    "MaskPlan",
    "MaskRun",
    "Masking",
    "MaskingError",
    "Operator",
    "Scanner",
]
