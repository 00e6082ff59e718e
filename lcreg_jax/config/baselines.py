"""What the baseline configs in configs/baselines/ share; they import it
(`from lcreg_jax.config import baselines`), which works however
ml_collections loads the config file.

Each baseline is a small delta over a data set's config in the repository's
configs/ (by default configs/fashion_mnist_lt.py):
`--config=configs/baselines/crt.py` or, for another data set,
`--config=configs/baselines/crt.py:cifar10_lt` (ml_collections passes the
part after ':' to get_config).
"""

import os
import runpy

from lcreg_jax.config import validate

# The repository's configs/, beside the package (the install is editable).
CONFIGS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  'configs',
)
# Held out from the long-tailed train set when the data set has no
# validation split of its own: post-hoc τ and best-on-validation choose on it,
# and every baseline sees the same split, so they stay comparable.
VAL_PER_CLASS = 20


def data_config(data: str | None = None):
  """configs/<data>.py's config (or that of a file path ending in .py,
  e.g. tests/tiny.py), with a validation split."""
  data = data or 'fashion_mnist_lt'
  path = data if data.endswith('.py') else os.path.join(CONFIGS, f'{data}.py')
  if not os.path.isfile(path):
    names = sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith('.py'))
    raise ValueError(
      f'No data set config {path}: after the ":" in '
      f'--config=configs/baselines/<method>.py:<data> name one of '
      f'{", ".join(names)}, or give a config file path ending in .py.'
    )
  # A data set's config is a config file, loaded by path as --config does.
  c = runpy.run_path(path)['get_config']()
  if not validate.has_val_split(c.data):
    c.data.val_per_class = VAL_PER_CLASS
  return c


def plain_ce(data: str | None = None):
  """Kang et al.'s instance-balanced CE stage 1: no latent module, no mixup,
  the head on the pooled feature; no stage 2. The stage-1 losses and the
  decoupled stage-2 methods are deltas over it."""
  c = data_config(data)
  c.model.latent.enabled = False
  c.model.classify_on = 'feature'
  c.stage1.mixup_alpha = 0.0
  c.stage1.loss = 'ce'
  c.stage1.reweight = 'none'
  c.stage2.enabled = False
  return c


def decoupled(method: str, data: str | None = None):
  """A stage-2 method over the plain CE stage 1 (benchmarks/compare.py
  reuses the ce run's stage-1 checkpoint for these)."""
  c = plain_ce(data)
  c.stage2.enabled = True
  c.stage2.method = method
  return c
