"""Each key is declared once (a Field): the config, its per-key checks and
the docs' key reference all come from the declarations."""

import pytest

from lcreg_jax.config import base
from lcreg_jax.config import schema
from lcreg_jax.models import heads
from lcreg_jax.models import resnet


def test_every_key_is_declared_once_with_a_doc():
  keys = [f.key for f in base.ALL_FIELDS]
  assert len(keys) == len(set(keys))
  assert set(keys) == set(schema.flatten(base.base_config()))
  assert all(f.doc.strip() for f in base.ALL_FIELDS)


def test_every_default_passes_its_own_declaration():
  flat = schema.flatten(base.base_config())
  assert schema.field_problems(base.ALL_FIELDS, flat) == []


def test_the_declared_choices_of_model_keys_are_the_models():
  fields = {f.key: f for f in base.ALL_FIELDS}
  assert set(fields['model.backbone'].choices) == set(resnet.BACKBONES)
  assert set(fields['model.head'].choices) == set(heads.HEADS)


def test_a_field_check_comes_from_its_declaration():
  fields = (
    schema.Field('a.n', 3, 'a count', check=schema.POSITIVE_INT),
    schema.Field('a.kind', 'x', 'a kind', choices=('x', 'y')),
    schema.Field(
      'a.opt', None, 'off while None', type=float, check=schema.POSITIVE
    ),
  )
  config = schema.build(fields)
  assert config.a.opt is None
  config.a.n, config.a.kind = 0, 'z'
  assert schema.field_problems(fields, schema.flatten(config)) == [
    "a.kind='z' is not one of x, y",
    'a.n=0 must be an integer >= 1',
  ]
  with pytest.raises(TypeError, match='needs type='):
    schema.Field('b', None, 'no type')
