"""Test setup: 4 fake CPU devices so that sharded code paths run everywhere,
and one persistent compilation cache for the session, so that the tiny model
compiled by one test (or by a `python -m lcreg_jax.main` subprocess) is
reused by the next instead of being compiled again.

The environment must be set before JAX is imported anywhere.
"""

import fcntl
import os
import tempfile

import pytest

# Tests run tiny programs, so XLA's slow backend optimisations and its
# newer CPU fusion emitters cost more (compile time) than they save (run
# time): without them a tiny run compiles ~30% faster.
XLA_FLAGS = (
  '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
)
os.environ.setdefault(
  'XLA_FLAGS', f'--xla_force_host_platform_device_count=4 {XLA_FLAGS}'
)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  tempfile.mkdtemp(prefix='lcreg_jax_test_xla_cache_'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory, worker_id):
  """tests/tiny.py run to the end through the real command: (workdir,
  stdout). Tests that change anything work on a copy. One run serves every
  xdist worker: the first to take the lock trains, the others read it."""
  from tests import cli  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.getbasetemp()
  if worker_id != 'master':
    root = root.parent  # shared by the workers of this session
  workdir, stdout = root / 'finished_run', root / 'finished_run.stdout'
  with open(root / 'finished_run.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not stdout.exists():
      res = cli.run_cli('--config=tests/tiny.py', f'--workdir={workdir}')
      assert res.returncode == 0, res.stderr[-3000:]
      stdout.write_text(res.stdout)
  return workdir, stdout.read_text()
