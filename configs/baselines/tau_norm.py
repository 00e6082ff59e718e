"""Baseline: τ-normalised classifier of the plain CE model, τ chosen on
validation (docs/method.md §8).

Command:
  python benchmarks/compare.py --methods=tau_norm --seeds=0 --root=workdirs/compare
(it trains ce.py's stage 1 first; this config retrains from it).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  return baselines.decoupled('tau_norm', data)
