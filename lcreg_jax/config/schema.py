"""How a config key is declared, once: `Field(key, default, doc, ...)`.

base.py and dlsa.py hold the tables of fields; from them come the
ConfigDict of defaults (`build`), the per-key checks (`field_problems`) and
the key reference of docs/configs.md (config/reference.py).

A default of None is a typed placeholder (`type=` names the type): a value
that another one determines ("from the stage-2 preset", "1/√D", "every
device"), filled in by config/resolve.py, or an optional value that is off
while None (`dlsa.flow_grad_clip`). The doc says which.
"""

import builtins
import dataclasses
import math
from typing import Any, Callable

import ml_collections
from ml_collections.config_dict import placeholder


def is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def is_num(x) -> bool:
  return (
    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
  )


# A range check: (predicate, what the value must be).
Check = tuple[Callable[[Any], bool], str]

POSITIVE_INT = (lambda x: is_int(x) and x >= 1, 'an integer >= 1')
NONNEG_INT = (lambda x: is_int(x) and x >= 0, 'an integer >= 0')
POSITIVE = (lambda x: is_num(x) and x > 0, 'a number > 0')
NONNEG = (lambda x: is_num(x) and x >= 0, 'a number >= 0')
UNIT = (lambda x: is_num(x) and 0 <= x <= 1, 'a number in [0, 1]')
MOMENTUM = (lambda x: is_num(x) and 0 <= x < 1, 'a number in [0, 1)')
OPEN_UNIT = (lambda x: is_num(x) and 0 < x < 1, 'a number in (0, 1)')
FACTOR = (lambda x: is_num(x) and 0 < x <= 1, 'a number in (0, 1]')
AT_LEAST_ONE = (lambda x: is_num(x) and x >= 1, 'a number >= 1 (1 = balanced)')
AT_LEAST_TWO = (lambda x: is_int(x) and x >= 2, 'an integer >= 2')
FINITE = (is_num, 'a finite number (1 = the prior itself)')
EPOCH_LIST = (
  lambda x: (
    isinstance(x, (tuple, list))
    and all(is_num(e) and e >= 0 for e in x)
    and list(x) == sorted(x)
  ),
  'an ascending list of epochs >= 0',
)


@dataclasses.dataclass(frozen=True)
class Field:
  """One config key: its dotted name (within its table), default, a
  one-line doc, and what it may hold (type of a None default, choices,
  range check)."""

  key: str
  default: Any
  doc: str
  type: builtins.type | None = None
  choices: tuple | None = None
  check: Check | None = None

  def __post_init__(self):
    if self.default is None and self.type is None:
      raise TypeError(f'{self.key}: a None default needs type=')


def build(fields, prefix: str = '') -> ml_collections.ConfigDict:
  """The ConfigDict of the fields' defaults (keys under `prefix` only, with
  it taken off), nested at the dots."""
  root = ml_collections.ConfigDict()
  for f in fields:
    if not f.key.startswith(prefix):
      continue
    *parents, leaf = f.key[len(prefix) :].split('.')
    node = root
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[leaf] = placeholder(f.type) if f.default is None else f.default
  return root


def flatten(config, prefix='') -> dict:
  """{'a.b.c': value} of a nested ConfigDict."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def field_problems(fields, flat: dict) -> list[str]:
  """Each key's own check: its choices, then its range. None passes where
  the default is None (a placeholder)."""
  problems = []
  for f in fields:
    value = flat[f.key]
    if f.choices is not None and value not in f.choices:
      problems.append(f'{f.key}={value!r} is not one of {", ".join(f.choices)}')
  for f in fields:
    value = flat[f.key]
    if f.check is None or (value is None and f.default is None):
      continue
    ok, what = f.check
    if not ok(value):
      problems.append(f'{f.key}={value!r} must be {what}')
  return problems
