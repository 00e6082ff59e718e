"""The stage-2 step changes only the head, and the BN statistics exactly
when shift-BN is on."""

import functools

import jax
import numpy as np
import pytest

from lcreg_jax import config as config_lib
from lcreg_jax import optim
from lcreg_jax import train_state
from lcreg_jax.models import network
from lcreg_jax.steps import retrain
from tests import tiny
from tests.steps.test_stage1 import batch


@pytest.mark.parametrize('shift_bn', [False, True])
def test_stage2_step_trains_only_the_head(shift_bn):
  cfg = tiny.tiny_config()
  cfg.stage2.shift_bn = shift_bn
  cfg = config_lib.resolve_and_validate(cfg, num_visible_devices=4)
  model = network.make_model(cfg.model, 10, lws=True)
  tx = optim.stage2_optimizer(cfg.stage2, 5, 2)
  state = train_state.create_train_state(
    model, jax.random.key(0), (8, 8, 1), tx, cfg.model
  ).replace(cov={})
  hp = retrain.RetrainHparams.from_config(cfg.stage2, np.arange(10) * 10 + 5)
  assert hp.shift_bn == shift_bn and hp.las_head == 0.1  # cifar10 IF10 row
  new, metrics = jax.jit(functools.partial(retrain.retrain_step, hp=hp))(
    state, batch()
  )
  assert np.isfinite(metrics['loss'])
  for path, (a, b) in zip(
    jax.tree_util.tree_leaves_with_path(state.params),
    zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)),
  ):
    keys = jax.tree_util.keystr(path[0])
    changed = not np.array_equal(a, b)
    assert changed == ("'head'" in keys), keys
  stats_changed = any(
    not np.array_equal(a, b)
    for a, b in zip(
      jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats)
    )
  )
  assert stats_changed == shift_bn
