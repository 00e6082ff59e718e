"""Per-data-set settings the papers publish as tables (docs/method.md §4).

The stage-2 row of MiSLAS: label-aware smoothing ε_1 (head) and ε_K (tail),
shift learning on BatchNorm, the classifier's lr factor, the weight decay and
the batch size, by data set and, for CIFAR, imbalance factor.
"""

STAGE2_FIELDS = (
  'las_head',
  'las_tail',
  'shift_bn',
  'lr_factor',
  'weight_decay',
  'batch_size',
)

# (preset, imbalance factor or None for "any") -> STAGE2_FIELDS.
STAGE2_PRESETS = {
  ('cifar10', 100): (0.3, 0.0, False, 0.5, 2e-4, 128),
  ('cifar10', 50): (0.2, 0.0, False, 0.2, 2e-4, 128),
  ('cifar10', 10): (0.1, 0.0, False, 0.2, 2e-4, 128),
  ('cifar100', 100): (0.4, 0.1, True, 0.2, 2e-4, 128),
  ('cifar100', 50): (0.3, 0.0, True, 0.1, 2e-4, 128),
  ('cifar100', 10): (0.2, 0.0, True, 0.1, 2e-4, 128),
  ('imagenet_lt', None): (0.3, 0.0, True, 0.05, 5e-4, 256),
  ('inat2018', None): (0.3, 0.0, True, 0.05, 1e-4, 256),
  ('places_lt', None): (0.4, 0.1, True, 0.05, 5e-4, 256),
}

STAGE2_PRESET_NAMES = tuple(sorted({name for name, _ in STAGE2_PRESETS}))


def stage2_row(preset: str, imbalance_factor: float) -> dict | None:
  """The preset's row for this imbalance factor, or None if it has none."""
  rounded = int(round(imbalance_factor))
  for key in ((preset, rounded), (preset, None)):
    if key in STAGE2_PRESETS:
      return dict(zip(STAGE2_FIELDS, STAGE2_PRESETS[key]))
  return None
