"""Evaluation (docs/method.md §7): predictions (predict), metrics (metrics), plots
(plots) and the one report writer (report)."""

from lcreg_jax.evaluate.metrics import calibration
from lcreg_jax.evaluate.metrics import compute_metrics
from lcreg_jax.evaluate.metrics import reliability_bins

__all__ = ['calibration', 'compute_metrics', 'reliability_bins']
