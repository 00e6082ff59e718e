"""`resolve_and_validate`: the one check of a config, before any work.

In order, all problems reported together before any data is read:
the keys match `base_config()`; each key's own check, declared with it
(schema.field_problems over base.ALL_FIELDS); the rules across keys and the
mesh's (rules.py). Then the placeholders are filled once (resolve.py), so
the rest of the package reads plain values. `validate_against_data` adds
the checks that need the data set's sizes.
"""

import weakref

import ml_collections

from lcreg_jax import errors
from lcreg_jax.config import base
from lcreg_jax.config import resolve
from lcreg_jax.config import rules
from lcreg_jax.config import schema
from lcreg_jax.data import samplers

# Names other modules read here.
flatten = schema.flatten
has_val_split = rules.has_val_split
POSTHOC_METHODS = rules.POSTHOC_METHODS


def _set(config, key: str, value):
  """config['a']['b'] = value for key 'a.b' (tests set keys by name)."""
  *parents, leaf = key.split('.')
  for p in parents:
    config = config[p]
  config[leaf] = value


def _key_problem(flat: dict, expected: dict) -> str | None:
  extra = sorted(set(flat) - set(expected))
  missing = sorted(set(expected) - set(flat))
  if not (extra or missing):
    return None
  parts = []
  if extra:
    parts.append(f'keys that no code reads: {", ".join(extra)}')
  if missing:
    parts.append(f'no value for: {", ".join(missing)}')
  return (
    'the config does not match lcreg_jax.config.base_config() ('
    + '; '.join(parts)
    + '). Config files must start from base_config() '
    'and change values only; check the spelling of the keys.'
  )


def resolve_and_validate(
  config: ml_collections.ConfigDict, num_visible_devices: int | None = None
) -> ml_collections.ConfigDict:
  """Checks every key and value; returns a resolved, locked copy.

  Args:
    config: a config built from `base_config()` (with overrides applied).
    num_visible_devices: devices the mesh may use; default `jax.device_count()`.
  Raises:
    errors.ConfigError naming every problem at once.
  A config it returned, passed again unchanged, comes back as it is.
  """
  if _already_resolved(config):
    return config
  flat = schema.flatten(config)
  key_problem = _key_problem(flat, schema.flatten(base.base_config()))
  if key_problem:
    raise errors.ConfigError(key_problem)
  if num_visible_devices is None:
    import jax  # pylint: disable=g-import-not-at-top

    num_visible_devices = jax.device_count()
  problems = (
    schema.field_problems(base.ALL_FIELDS, flat)
    + rules.problems(config, flat)
    + rules.device_problems(config, flat, num_visible_devices)
  )
  if problems:
    raise errors.ConfigError(
      f'the config has {len(problems)} invalid value'
      f'{"s" if len(problems) > 1 else ""}: '
      + '; '.join(problems)
      + f'. Fix {"them" if len(problems) > 1 else "it"} in the config file or '
      'with --config.KEY=VALUE; nothing was read or trained.'
    )
  resolved = resolve.resolve(config, num_visible_devices)
  _RESOLVED[id(resolved)] = (weakref.ref(resolved), resolved.to_dict())
  weakref.finalize(resolved, _RESOLVED.pop, id(resolved), None)
  return resolved


# The configs resolve_and_validate returned, by id, with the values they had
# then: one handed back unchanged (main.py's, again in train_and_evaluate)
# is returned as it is instead of being checked and resolved twice.
_RESOLVED: dict[int, tuple[weakref.ref, dict]] = {}


def _already_resolved(config) -> bool:
  ref, values = _RESOLVED.get(id(config), (None, None))
  return ref is not None and ref() is config and values == config.to_dict()


def validate_against_data(config, info) -> None:
  """Checks that need the data set's description (sizes, not pixels)."""
  n = info.split_sizes['train']
  problems = []
  for stage in ('stage1', 'stage2'):
    if config[stage].enabled and config[stage].batch_size > n:
      problems.append(
        f'{stage}.batch_size={config[stage].batch_size} is larger than the '
        f'{n} training images of {info.name}: lower it (it must also '
        'divide evenly over the devices), or use more data (e.g. a '
        'smaller data.imbalance_factor)'
      )
  s1 = config.stage1
  if s1.enabled:
    problems += rules.drw_problems(
      s1, samplers.steps_per_epoch(n, s1.batch_size), info.name
    )
  if problems:
    raise errors.ConfigError('; '.join(problems) + '. Nothing was trained.')
