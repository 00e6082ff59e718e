"""Entry point: python -m lcreg_jax.main --config=configs/default.py [--workdir=DIR]

Overrides use ml_collections syntax (--config.stage1.epochs=3). Every mistake
a user can make on the command line or in the config (a missing or broken
config file, an unknown key, a value of the wrong type or out of range, a
workdir that is a file, bad data, a checkpoint of another model) ends with a
one-paragraph `error: ...` and a non-zero exit, not a traceback. Re-running
the same command resumes from the last checkpoint.
"""

import difflib
import os
import sys

# TensorFlow (tf.data, TensorBoard) logs its C++ start-up chatter at INFO;
# it says nothing about the run. Set before anything imports TensorFlow.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lcreg_jax import cli
from lcreg_jax import config as config_lib
from lcreg_jax.config import validate as config_validate
from lcreg_jax import errors
from lcreg_jax import files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/*.py).', lock_config=True
)
flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs, '
  'TensorBoard events and reports (default: '
  'workdirs/<config file name>).',
)
flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() (multi-host TPU pods / multi-node GPU).',
)

USAGE = (
  'python -m lcreg_jax.main --config=configs/default.py '
  '[--workdir=DIR] [--config.KEY=VALUE ...]'
)


def fail(message: str, code: int = 2):
  """Stops with one paragraph on stderr, no traceback."""
  print(f'\nerror: {message}\n', file=sys.stderr, flush=True)
  sys.exit(code)


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_overrides(argv) -> list[str]:
  """`--config.a.b=...` arguments whose key is not in base_config()."""
  known = set(config_validate.flatten(config_lib.base_config()))
  unknown = []
  for arg in argv:
    if arg.startswith('--config.'):
      key = arg[len('--config.') :].split('=', 1)[0]
      if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        unknown.append(key + (f' (did you mean {close[0]}?)' if close else ''))
  return unknown


def _explain(error: BaseException, argv, usage: str = USAGE) -> str:
  path = _config_path(argv)
  if path is None:
    return f'no config file given. Usage: {usage}'
  if isinstance(error, SyntaxError):
    return (
      f'the config file {path} does not parse: {error.msg} at line '
      f'{error.lineno}. Fix the file (it must define get_config()).'
    )
  if not os.path.isfile(path):
    return (
      f'the config file {path} does not exist (looked relative to '
      f'{os.getcwd()}). Pass one of configs/*.py, e.g. '
      '--config=configs/default.py.'
    )
  unknown = _unknown_overrides(argv)
  if unknown:
    return (
      f'unknown config key{"s" if len(unknown) > 1 else ""}: '
      f'{", ".join(unknown)}. Every key is listed, with its default, in '
      'lcreg_jax/config/base.py.'
    )
  if isinstance(error, flags.Error):
    return (
      f'{error}. Give the value in the type of its default (see '
      'lcreg_jax/config/base.py).'
    )
  if "has no attribute 'get_config'" in str(error):
    return f'the config file {path} has no get_config() function.'
  return (
    f'loading the config file {path} failed: {type(error).__name__}: '
    f'{error}. Fix get_config() in that file.'
  )


def parse_flags(argv, usage: str = USAGE):
  """absl's parsing, with each failure turned into an `error:` paragraph
  (`usage`: the command's, e.g. lcreg_jax.aot's)."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is None:
      raise flags.IllegalFlagValueError('--config is required')
    FLAGS.config.keys()  # a config file that failed to load raises here
  except Exception as e:  # pylint: disable=broad-except
    # config_flags re-raises whatever the config file or an override raised;
    # each is a user error here, explained by _explain.
    fail(_explain(e, argv, usage))
  if len(rest) > 1:
    fail(f'unexpected arguments {rest[1:]}. Usage: {usage}')
  return rest


def default_workdir() -> str:
  name = os.path.splitext(
    os.path.basename(config_flags.get_config_filename(FLAGS['config']))
  )[0]
  return os.path.join('workdirs', name)


def main(argv):
  del argv  # checked by parse_flags
  # Orbax logs every checkpoint step at INFO; keep the log about training.
  logging.get_absl_handler().addFilter(
    lambda record: '/orbax/' not in record.pathname
  )
  try:
    if FLAGS.distributed:
      from lcreg_jax import distributed  # pylint: disable=g-import-not-at-top

      distributed.initialize()
  except errors.UserError as e:
    fail(str(e))
  logging.info(
    'JAX %s, process %d/%d, devices: %s',
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.devices(),
  )
  workdir = FLAGS.workdir or default_workdir()
  logging.info('workdir: %s', files.as_path(workdir))
  try:
    config = config_lib.resolve_and_validate(FLAGS.config)
    # Imported once the config is known to be good, so that a mistake in it
    # is reported in a second, without first loading TensorFlow and orbax.
    from lcreg_jax import preemption  # pylint: disable=g-import-not-at-top
    from lcreg_jax import stages  # pylint: disable=g-import-not-at-top

    preemption.install()
    stages.train_and_evaluate(config, workdir)
  except errors.UserError as e:
    if isinstance(e, errors.Preempted):
      # 128 + SIGTERM, as if the signal had ended the process: schedulers
      # that restart failed jobs (SLURM --requeue, Kubernetes) start it again.
      print(f'\n{e}\n', file=sys.stderr, flush=True)
      sys.exit(143)
    # These explain themselves; a traceback would only bury the message.
    fail(str(e), code=1)


def run():
  cli.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
