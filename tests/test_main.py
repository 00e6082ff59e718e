"""Every mistake a user can make ends in one `error:` paragraph, a non-zero
exit and no traceback, and leaves existing checkpoints bit-identical."""

import gzip
import hashlib
import json
import os
import shutil
import struct
import sys

import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax import main as main_lib
from lcreg_jax import stages
from tests import cli
from tests import tiny

ROOT = cli.ROOT


def _main(capsys, *args):
  """main's flag parsing and run in this process: (exit code, stderr)."""
  main_lib.FLAGS.unparse_flags()
  for name in list(main_lib.FLAGS):
    if name.startswith('config.'):  # overrides defined by an earlier parse
      delattr(main_lib.FLAGS, name)
  cwd, argv = os.getcwd(), sys.argv
  # config_flags defines the --config.* override flags from sys.argv.
  sys.argv = ['lcreg_jax.main', *args]
  os.chdir(ROOT)
  try:
    main_lib.main(main_lib.parse_flags(sys.argv))
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    os.chdir(cwd)
    sys.argv = argv
  return code, capsys.readouterr().err


def _tree_digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(path.encode())
      with open(path, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


@pytest.fixture(name='finished')
def finished_fixture(finished_run):
  return finished_run


@pytest.mark.slow
def test_cli_run_prints_the_table_and_records_the_config(finished):
  workdir, out = finished
  assert '| stage1 |' in out and '| stage2 |' in out
  assert sorted(os.listdir(workdir)) == [
    'config.json',
    'stage1',
    'stage2',
    'summary.json',
  ]


BAD_INPUTS = {
  'missing config file': (
    ['--config=configs/nope.py'],
    'configs/nope.py does not exist',
  ),
  'config file that does not parse': (['--config=BROKEN'], 'does not parse: '),
  'unknown key': (
    ['--config=tests/tiny.py', '--config.stage1.learning_rate=0.1'],
    'unknown config key: stage1.learning_rate',
  ),
  'value of the wrong type': (
    ['--config=tests/tiny.py', '--config.stage1.batch_size=many'],
    '--config.stage1.batch_size=many',
  ),
  'zero batch size': (
    ['--config=tests/tiny.py', '--config.stage1.batch_size=0'],
    'stage1.batch_size=0 must be an integer >= 1',
  ),
  'negative epochs': (
    ['--config=tests/tiny.py', '--config.stage2.epochs=-2'],
    'stage2.epochs=-2.0 must be a number > 0',
  ),
  'zero steps': (
    ['--config=tests/tiny.py', '--config.stage1.steps=0'],
    'stage1.steps=0 must be an integer >= 1',
  ),
  'zero latent count': (
    ['--config=tests/tiny.py', '--config.model.latent.num_latents=0'],
    'model.latent.num_latents=0 must be an integer >= 1',
  ),
  'zero cluster count': (
    ['--config=tests/tiny.py', '--config.dlsa.num_clusters=0'],
    'dlsa.num_clusters=0 must be an integer >= 1',
  ),
  'unknown backbone': (
    ['--config=tests/tiny.py', '--config.model.backbone=resnet9'],
    "model.backbone='resnet9' is not one of",
  ),
  'unknown DLSA choice': (
    [
      '--config=tests/tiny.py',
      '--config.dlsa.enabled=True',
      '--config.dlsa.purity_type=hinge',
    ],
    "dlsa.purity_type='hinge'",
  ),
  'unknown stage-2 preset': (
    ['--config=tests/tiny.py', '--config.stage2.preset=cifar1000'],
    "stage2.preset='cifar1000'",
  ),
  'batch larger than the data set': (
    ['--config=tests/tiny.py', '--config.stage1.batch_size=4096'],
    'stage1.batch_size=4096 is larger than the 585 training images',
  ),
}


@pytest.mark.slow  # uses the finished run
@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_stops_with_a_message_and_harms_nothing(
  case, finished, tmp_path, capsys
):
  workdir, _ = finished
  args, expected = BAD_INPUTS[case]
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config():\n  return {\n')
  args = [a.replace('BROKEN', str(broken)) for a in args]
  before = _tree_digest(workdir)
  code, err = _main(capsys, *args, f'--workdir={workdir}')
  assert code != 0
  assert 'error: ' in err and expected in err, err
  assert 'Traceback' not in err
  assert _tree_digest(workdir) == before


def test_workdir_that_is_a_file(tmp_path, capsys):
  path = tmp_path / 'results.txt'
  path.write_text('mine')
  code, err = _main(capsys, '--config=tests/tiny.py', f'--workdir={path}')
  assert code == 1 and f'--workdir={path} is a file' in err
  assert path.read_text() == 'mine'


def test_the_real_command_exits_non_zero_without_a_traceback(tmp_path):
  res = cli.run_cli(
    '--config=configs/default.py',
    f'--workdir={tmp_path}',
    '--config.stage1.learning_rate=0.1',
  )
  assert res.returncode == 2
  assert 'error: unknown config key: stage1.learning_rate' in res.stderr
  assert 'Traceback' not in res.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(
  finished, tmp_path, capsys
):
  workdir = tmp_path / 'copy'
  shutil.copytree(finished[0], workdir)
  final = workdir / 'stage1' / 'checkpoints' / '6' / 'default' / '_METADATA'
  final.write_text('{damaged')
  code, err = _main(capsys, '--config=tests/tiny.py', f'--workdir={workdir}')
  assert code == 0, err
  # Steps 5 and 6 retrained from step 4 give the same stage-1 model: the
  # reports match the undamaged run's, and the damaged step is kept aside.
  for stage in ('stage1', 'stage2'):
    got = json.load(open(workdir / stage / 'report.json'))
    want = json.load(open(finished[0] / stage / 'report.json'))
    assert got['top1'] == want['top1']
    np.testing.assert_allclose(got['nll'], want['nll'], rtol=1e-5)
  (aside,) = os.listdir(workdir / 'stage1' / 'checkpoints.corrupt')
  assert aside.startswith('6-')


def test_missing_data_set_names_path_and_fix(tmp_path, capsys):
  missing = tmp_path / 'nowhere'
  code, err = _main(
    capsys,
    '--config=configs/fashion_mnist_lt.py',
    f'--workdir={tmp_path}/w',
    f'--config.data.data_dir={missing}',
  )
  assert code == 1
  assert str(missing) in err and 'error:' in err


def _write_idx(directory, images, labels):
  os.makedirs(directory, exist_ok=True)
  for prefix in ('train', 't10k'):
    with gzip.open(
      os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), 'wb'
    ) as f:
      f.write(struct.pack('>IIII', 0x803, *images.shape) + images.tobytes())
    with gzip.open(
      os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), 'wb'
    ) as f:
      f.write(struct.pack('>II', 0x801, len(labels)) + labels.tobytes())


@pytest.mark.parametrize('problem', ['shape', 'label'])
def test_bad_images_or_labels_stop_with_message(tmp_path, capsys, problem):
  rng = np.random.default_rng(0)
  size = 10 if problem == 'shape' else 28
  images = rng.integers(0, 255, (40, size, size), dtype=np.uint8)
  labels = np.repeat(np.arange(10, dtype=np.uint8), 4)
  if problem == 'label':
    labels[5] = 12
  _write_idx(tmp_path / 'idx', images, labels)
  code, err = _main(
    capsys,
    '--config=configs/fashion_mnist_lt.py',
    f'--workdir={tmp_path}/w',
    f'--config.data.data_dir={tmp_path}/idx',
  )
  assert code == 1
  assert ('shape' if problem == 'shape' else 'out of range') in err
  assert str(tmp_path / 'idx') in err


def _copy_of_finished(finished, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(finished[0], workdir)
  ckpt_dir = workdir / 'stage1' / 'checkpoints'
  return workdir, ckpt_dir, _tree_digest(ckpt_dir)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(finished, tmp_path):
  workdir, ckpt_dir, before = _copy_of_finished(finished, tmp_path)
  # Same model, longer schedule, absurd learning rate: it resumes from step
  # 6 and blows up; step 6 must survive bit for bit, with nothing newer.
  cfg = tiny.tiny_config()
  cfg.stage1.steps = 12
  cfg.stage1.lr = 1e30
  with pytest.raises(errors.NonFiniteLossError, match='step 6'):
    stages.train_and_evaluate(cfg, str(workdir))
  assert _tree_digest(ckpt_dir) == before
  assert max(int(p) for p in os.listdir(ckpt_dir) if p.isdigit()) == 6


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_and_untouched(
  finished, tmp_path
):
  workdir, ckpt_dir, before = _copy_of_finished(finished, tmp_path)
  cfg = tiny.tiny_config()
  cfg.model.latent.num_latents = 6
  with pytest.raises(errors.CheckpointError, match='num_latents|model') as e:
    stages.train_and_evaluate(cfg, str(workdir))
  assert str(ckpt_dir) in str(e.value)
  assert _tree_digest(ckpt_dir) == before
