"""Entry point: python -m lcreg_jax.main --config=configs/default.py [--workdir=DIR]

Overrides use ml_collections syntax (--config.stage1.epochs=3); unknown keys
are rejected. Re-running the same command resumes from the last checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lcreg_jax import errors
from lcreg_jax import run
from lcreg_jax.data import sources

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, '
                    'TensorBoard events and reports (default: '
                    'workdirs/<config file name>).')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() '
                  '(multi-host TPU pods / multi-node GPU).')
flags.mark_flags_as_required(['config'])


def default_workdir() -> str:
  name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(FLAGS['config'])))[0]
  return os.path.join('workdirs', name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax logs every checkpoint step at INFO; keep the log about training.
  logging.get_absl_handler().addFilter(
      lambda record: '/orbax/' not in record.pathname)
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info('JAX %s, process %d/%d, devices: %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  try:
    workdir = FLAGS.workdir or default_workdir()
    logging.info('workdir: %s', os.path.abspath(workdir))
    run.train_and_evaluate(FLAGS.config, workdir)
  except (errors.LCRegError, sources.DataError) as e:
    # These explain themselves; a traceback would only bury the message.
    print(f'\nerror: {e}\n', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
