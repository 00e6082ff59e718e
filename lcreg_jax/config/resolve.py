"""Placeholder resolution: each None a key's doc says is "from" something
is filled in here, once, on a config that passed every check.

The rest of the package then reads plain values: the device count, the
covariance's sharding, 1/√D and the flow's width from the backbone's D
(models/resnet.py's table), DLSA's per-data-set values (dlsa.with_preset)
and the MiSLAS stage-2 row (presets.py).
"""

import functools
import math

import ml_collections

from lcreg_jax.config import dlsa as dlsa_config
from lcreg_jax.config import base as base_fields
from lcreg_jax.config import presets
from lcreg_jax.models import resnet


def resolve(
  config: ml_collections.ConfigDict, num_visible_devices: int
) -> ml_collections.ConfigDict:
  """A locked copy of `config` with its placeholders filled."""
  devices = config.num_devices or num_visible_devices
  resolved = config.copy_and_resolve_references()
  resolved.unlock()
  # An empty command-line value (`--config.data.image_root=`) clears an
  # optional path or name: None, as its default.
  for field in base_fields.ALL_FIELDS:
    if field.type is str and field.default is None:
      *parents, leaf = field.key.split('.')
      node = functools.reduce(lambda n, p: n[p], parents, resolved)
      if node[leaf] == '':
        node[leaf] = None
  resolved.num_devices = devices
  latent = resolved.model.latent
  if resolved.shard_covariance is None:  # see base.py
    resolved.shard_covariance = bool(
      latent.covariance == 'full'
      and devices > 1
      and latent.num_latents % devices == 0
    )
  resolved.shard_covariance = bool(resolved.shard_covariance and latent.enabled)
  dim = resnet.feature_dim(config.model.backbone)
  if resolved.model.latent.similarity_scale is None:
    resolved.model.latent.similarity_scale = 1.0 / math.sqrt(dim)
  if resolved.dlsa.hidden_dim is None:
    resolved.dlsa.hidden_dim = dim
  # The authors' per-data-set values.
  dlsa_config.with_preset(resolved.dlsa, config.data.name)
  row = presets.stage2_row(config.stage2.preset, config.data.imbalance_factor)
  for field in presets.STAGE2_FIELDS:
    if resolved.stage2[field] is None and row is not None:
      resolved.stage2[field] = row[field]
  resolved.lock()
  return resolved
