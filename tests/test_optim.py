"""Learning-rate schedules of both stages, by hand."""

import numpy as np

from lcreg_jax import optim
from tests import tiny


def test_stage1_warmup_per_epoch_as_mislas():
  """MiSLAS: lr·(e + 1)/5 set once per epoch for e = 0..4, ×0.1 from epoch
  160, ×0.01 from epoch 180 (counting from 0)."""
  cfg = tiny.tiny_config().stage1
  cfg.update(
    lr=0.1,
    warmup_epochs=5.0,
    decay_epochs=(160.0, 180.0),
    decay_factor=0.1,
    schedule='step',
    warmup='per_epoch',
  )
  spe = 7
  sched = optim.stage1_schedule(cfg, steps_per_epoch=spe, total_steps=200 * spe)
  expected = {
    0: 0.02,
    1: 0.04,
    2: 0.06,
    3: 0.08,
    4: 0.1,
    5: 0.1,
    159: 0.1,
    160: 0.01,
    179: 0.01,
    180: 0.001,
    199: 0.001,
  }
  for epoch, lr in expected.items():
    for step in (
      epoch * spe,
      epoch * spe + spe - 1,
    ):  # constant within the epoch
      np.testing.assert_allclose(
        sched(step), lr, rtol=1e-5, err_msg=f'epoch {epoch}'
      )


def test_stage1_schedule_warmup_per_iteration_and_steps():
  cfg = tiny.tiny_config().stage1
  cfg.update(
    lr=0.1,
    warmup_epochs=2,
    decay_epochs=(4, 6),
    decay_factor=0.1,
    schedule='step',
    warmup='per_iteration',
  )
  sched = optim.stage1_schedule(cfg, steps_per_epoch=10, total_steps=80)
  # Warm-up per iteration: lr (1 + t) / warmup_steps over the first 20 steps.
  np.testing.assert_allclose(sched(0), 0.1 / 20, rtol=1e-5)
  np.testing.assert_allclose(sched(9), 0.1 * 10 / 20, rtol=1e-5)
  np.testing.assert_allclose(sched(19), 0.1, rtol=1e-5)
  np.testing.assert_allclose(sched(39), 0.1, rtol=1e-5)
  np.testing.assert_allclose(sched(40), 0.01, rtol=1e-5)
  np.testing.assert_allclose(sched(60), 0.001, rtol=1e-5)


def test_stage1_cosine_schedule_per_step():
  cfg = tiny.tiny_config().stage1
  cfg.update(
    lr=0.1, warmup_epochs=0.0, schedule='cosine', cosine_update='per_step'
  )
  sched = optim.stage1_schedule(cfg, steps_per_epoch=10, total_steps=80)
  for t in (0, 20, 40, 79):
    np.testing.assert_allclose(
      sched(t), 0.05 * (1 + np.cos(np.pi * t / 80)), rtol=1e-5, atol=1e-7
    )


def mislas_cosine(lr, epoch, num_epochs):
  """MiSLAS train_stage1.py's adjust_learning_rate with cos=True, run at
  the start of each epoch (lr_min = 0, its own π)."""
  return 0.5 * lr * (1 + np.cos(epoch / num_epochs * 3.1415926535))


def test_stage1_cosine_per_epoch_as_mislas():
  """The default cosine: MiSLAS's lr for every step of a 12-epoch run of
  7 steps an epoch, constant within each epoch."""
  cfg = tiny.tiny_config().stage1
  cfg.update(lr=0.1, warmup_epochs=0.0, schedule='cosine')
  assert cfg.cosine_update == 'per_epoch'
  spe, epochs = 7, 12
  sched = optim.stage1_schedule(
    cfg, steps_per_epoch=spe, total_steps=epochs * spe
  )
  want = np.repeat([mislas_cosine(0.1, e, epochs) for e in range(epochs)], spe)
  got = np.array([sched(t) for t in range(epochs * spe)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
  assert got[-1] > 0.001  # the last epoch's lr, not 0


def test_stage1_cosine_per_epoch_after_a_warmup():
  """With a warm-up of W epochs (not in MiSLAS), the cosine runs over the
  remaining E - W epochs."""
  cfg = tiny.tiny_config().stage1
  cfg.update(lr=0.1, warmup_epochs=2.0, schedule='cosine', warmup='per_epoch')
  spe = 5
  sched = optim.stage1_schedule(cfg, steps_per_epoch=spe, total_steps=10 * spe)
  want = [0.05, 0.1] + [mislas_cosine(0.1, e, 8) for e in range(8)]
  got = [[float(sched(e * spe + i)) for i in range(spe)] for e in range(10)]
  np.testing.assert_allclose(
    got, np.repeat(want, spe).reshape(10, spe), rtol=1e-6, atol=1e-9
  )


def test_stage2_schedule_is_per_epoch_cosine():
  sched = optim.per_epoch_cosine(0.1, steps_per_epoch=5, epochs=10)
  for step in (0, 4, 5, 27, 49):
    e = step // 5
    np.testing.assert_allclose(
      sched(step), 0.05 * (1 + np.cos(np.pi * e / 10)), rtol=1e-5
    )


def test_head_param_labels():
  params = {
    'backbone': {'conv': {'kernel': 0}},
    'head': {'fc': {'kernel': 0, 'bias': 0}, 'scale': 0},
  }
  assert optim.head_param_labels(params) == {
    'backbone': {'conv': {'kernel': 'frozen'}},
    'head': {
      'fc': {'kernel': 'classifier', 'bias': 'classifier'},
      'scale': 'scale',
    },
  }
