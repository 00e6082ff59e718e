"""Baseline: learnable weight scaling (LWS) on the frozen plain CE model:
only the per-class scale learns, class-balanced sampling, plain CE.

Command:
  python benchmarks/compare.py --methods=lws --seeds=0 --root=workdirs/compare
(it trains ce.py's stage 1 first; this config retrains from it).
Result to expect: no run record yet (docs/results.md).
"""

from lcreg_jax.config import baselines


def get_config(data=None):
  return baselines.decoupled('lws', data)
