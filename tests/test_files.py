"""Workdirs on a file system other than the local one, through the same
code as gs://: etils.epath's GPath on tf.io.gfile, here with TensorFlow's
in-memory file system (ram://) instead of Cloud Storage."""

import contextlib
import json
import os

import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from etils.epath import gpath
from etils.epath import register

from lcreg_jax import checkpoints
from lcreg_jax import files
from lcreg_jax import stages
from tests import tiny


@contextlib.contextmanager
def ram_scheme():
  """Lets epath route ram:// like gs://: the same GPath class and the same
  tf.io.gfile backend; only gfile's file-system plugin differs."""
  saved = (gpath._URI_SCHEMES, gpath._URI_PREFIXES)
  gpath._URI_SCHEMES = saved[0] | {'ram'}
  gpath._URI_PREFIXES = saved[1] + ('ram://',)
  gpath._URI_MAP_ROOT['ram://'] = '/ram/'
  gpath._PREFIX_TO_BACKEND['ram'] = gpath.backend_lib.tf_backend
  register._URI_PREFIXES_TO_CLS['ram://'] = gpath.PosixGPath
  try:
    yield
  finally:
    gpath._URI_SCHEMES, gpath._URI_PREFIXES = saved
    del gpath._URI_MAP_ROOT['ram://'], gpath._PREFIX_TO_BACKEND['ram']
    del register._URI_PREFIXES_TO_CLS['ram://']


def ram_tree(root: str) -> set[str]:
  """Every file under a ram:// folder, relative to it (gfile's view)."""
  out = set()
  for top, _, names in tf.io.gfile.walk(root):
    for name in names:
      out.add(os.path.join(top, name)[len(root) + 1 :])
  return out


def test_paths_and_atomic_json(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(files.as_path('a/b')) == str(tmp_path / 'a' / 'b')
  assert str(files.as_path('gs://bucket/run') / 'x') == 'gs://bucket/run/x'
  assert files.is_uri('gs://b/x') and not files.is_uri('/tmp/x')
  with ram_scheme():
    root = f'ram://files_{os.getpid()}/json'
    files.write_json(f'{root}/deep/r.json', {'a': [1, 2.5]})
    assert files.read_json(f'{root}/deep/r.json') == {'a': [1, 2.5]}
    files.write_json(f'{root}/deep/r.json', {'a': 3})  # replaces
    assert files.read_json(f'{root}/deep/r.json') == {'a': 3}
    assert ram_tree(root) == {'deep/r.json'}  # no .tmp left
  assert not os.listdir(tmp_path)  # nothing local


@pytest.mark.slow
def test_run_with_a_ram_workdir_equals_a_local_run(
  finished_run, tmp_path, monkeypatch
):
  # TensorStore, orbax's array writer, has its own drivers (file, gcs, s3)
  # and no in-memory one that survives orbax's folder renames, so the
  # arrays go to a local mirror of the ram:// path; orbax's own metadata,
  # and every file the project writes, stay on ram://.
  mirror = tmp_path / 'orbax'

  def mirrored(real_manager):
    def manager(directory, *args, **kwargs):
      directory = os.fspath(directory)
      assert directory.startswith('ram://'), directory
      return real_manager(mirror / directory[len('ram://') :], *args, **kwargs)

    return manager

  # Inference reads through orbax's manager, training saves through ours.
  monkeypatch.setattr(ocp, 'CheckpointManager', mirrored(ocp.CheckpointManager))
  monkeypatch.setattr(checkpoints, '_Manager', mirrored(checkpoints._Manager))
  monkeypatch.chdir(tmp_path)
  config = tiny.tiny_config()
  config.eval.plots = True
  root = f'ram://run_{os.getpid()}/work'
  with ram_scheme():
    stages.train_and_evaluate(config, root)
    written = ram_tree(root)
    reports = {
      s: json.loads(tf.io.gfile.GFile(f'{root}/{s}/report.json').read())
      for s in ('stage1', 'stage2')
    }
    # Run again: both stages find their final checkpoints and only evaluate.
    again = stages.train_and_evaluate(config, root)
  for name in (
    'config.json',
    'summary.json',
    'stage1/report.json',
    'stage2/report.json',
    'stage1/plots/reliability.png',
    'stage1/plots/latent_usage.png',
    'stage1/checkpoints/fingerprint.json',
    'stage2/checkpoints/fingerprint.json',
  ):
    assert name in written, sorted(written)
  assert any('tfevents' in n and n.startswith('stage1/') for n in written)
  assert not any(n.endswith('.tmp') for n in written)
  assert sorted(os.listdir(tmp_path)) == ['orbax']  # no stray local files
  local = finished_run[0]
  for stage, rep in reports.items():
    with open(local / stage / 'report.json') as f:
      ref = json.load(f)
    assert rep['top1'] == ref['top1'] and rep['nll'] == ref['nll'], stage
    assert again[stage]['top1'] == rep['top1']
