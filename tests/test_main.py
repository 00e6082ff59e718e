"""Bad input stops with a message, and never harms existing checkpoints."""

import gzip
import hashlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax import run
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run(
      [sys.executable, '-m', 'lcreg_jax.main', *args], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)


def _tree_digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(path.encode())
      with open(path, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


def test_unknown_config_key_is_rejected(tmp_path):
  res = _main('--config=configs/default.py', f'--workdir={tmp_path}',
              '--config.stage1.learning_rate=0.1')
  assert res.returncode != 0
  assert 'learning_rate' in res.stderr
  assert not os.listdir(tmp_path)


def test_missing_data_set_names_path_and_fix(tmp_path):
  missing = tmp_path / 'nowhere'
  res = _main('--config=configs/fashion_mnist_lt.py', f'--workdir={tmp_path}/w',
              f'--config.data.data_dir={missing}')
  assert res.returncode == 1
  assert str(missing) in res.stderr and 'error:' in res.stderr
  assert 'Traceback' not in res.stderr


def _write_idx(directory, images, labels):
  os.makedirs(directory, exist_ok=True)
  for prefix in ('train', 't10k'):
    with gzip.open(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
                   'wb') as f:
      f.write(struct.pack('>IIII', 0x803, *images.shape) + images.tobytes())
    with gzip.open(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'),
                   'wb') as f:
      f.write(struct.pack('>II', 0x801, len(labels)) + labels.tobytes())


@pytest.mark.parametrize('problem', ['shape', 'label'])
def test_bad_images_or_labels_stop_with_message(tmp_path, problem):
  rng = np.random.default_rng(0)
  size = 10 if problem == 'shape' else 28
  images = rng.integers(0, 255, (40, size, size), dtype=np.uint8)
  labels = np.repeat(np.arange(10, dtype=np.uint8), 4)
  if problem == 'label':
    labels[5] = 12
  _write_idx(tmp_path / 'idx', images, labels)
  res = _main('--config=configs/fashion_mnist_lt.py', f'--workdir={tmp_path}/w',
              f'--config.data.data_dir={tmp_path}/idx')
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  assert ('shape' if problem == 'shape' else 'out of range') in res.stderr
  assert str(tmp_path / 'idx') in res.stderr


def _finished_stage1(tmp_path):
  """A tiny finished stage 1: its config, checkpoint dir and digest."""
  cfg = tiny.tiny_config()
  cfg.stage2.enabled = False
  run.train_and_evaluate(cfg, str(tmp_path))
  ckpt_dir = tmp_path / 'stage1' / 'checkpoints'
  return cfg, ckpt_dir, _tree_digest(ckpt_dir)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg, ckpt_dir, before = _finished_stage1(tmp_path)
  # Same model, longer schedule, absurd learning rate: it resumes from step
  # 6 and blows up; step 6 must survive bit for bit, with nothing newer.
  cfg.stage1.steps = 12
  cfg.stage1.lr = 1e30
  with pytest.raises(errors.NonFiniteLossError, match='step 6'):
    run.train_and_evaluate(cfg, str(tmp_path))
  assert _tree_digest(ckpt_dir) == before
  assert max(int(p) for p in os.listdir(ckpt_dir) if p.isdigit()) == 6


def test_checkpoint_of_another_model_is_refused_and_untouched(tmp_path):
  cfg, ckpt_dir, before = _finished_stage1(tmp_path)
  cfg.model.latent.num_latents = 6
  with pytest.raises(errors.CheckpointMismatchError,
                     match='num_latents|model') as e:
    run.train_and_evaluate(cfg, str(tmp_path))
  assert str(ckpt_dir) in str(e.value)
  assert _tree_digest(ckpt_dir) == before


def test_unknown_choice_is_a_config_error(tmp_path):
  cfg = tiny.tiny_config()
  cfg.model.classify_on = 'features'
  with pytest.raises(errors.ConfigError, match='classify_on'):
    run.train_and_evaluate(cfg, str(tmp_path))
