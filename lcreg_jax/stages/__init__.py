"""The run: stage 1 → stage 2 → DLSA, as the config enables them.

Each stage reads the previous stage's checkpoint, never its internals, and
writes its report through `evaluate.report`; the run ends with the summary
table.
"""

import json
import time

from absl import logging
import jax

from lcreg_jax import config as config_lib
from lcreg_jax import errors
from lcreg_jax import files
from lcreg_jax import parallel
from lcreg_jax import preemption
from lcreg_jax.data import dataset as dataset_lib
from lcreg_jax.evaluate import report
from lcreg_jax.stages import common
from lcreg_jax.stages import dlsa as dlsa_stage
from lcreg_jax.stages import stage1
from lcreg_jax.stages import stage2


def check_workdir(workdir) -> None:
  """Stops early if the workdir cannot be one; creates nothing."""
  path = files.as_path(workdir)
  if path.exists() and not path.is_dir():
    raise errors.ConfigError(
      f'--workdir={workdir} is a file, not a directory. Pass a directory '
      '(it is created if missing), or omit --workdir to use '
      'workdirs/<config name>.'
    )


def record_config(workdir, config) -> None:
  """Creates the workdir and records the resolved config in config.json.

  A config.json of an earlier, different run is kept beside it as
  config-<time>.json: nothing a user made is overwritten.
  """
  workdir = files.as_path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(
      f'cannot create --workdir={workdir} ({e.strerror or e}); choose a '
      'directory you can write to.'
    ) from e
  if jax.process_index() != 0:
    return
  path = workdir / 'config.json'
  text = json.dumps(config.to_dict(), indent=2, sort_keys=True)
  if path.exists():
    if path.read_text() == text:
      return
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(path.stat().mtime))
    path.replace(workdir / f'config-{stamp}.json')
  files.write_text(path, text)


def train_and_evaluate(config, workdir: str, hooks=()) -> dict:
  """Runs the enabled stages; returns {stage: report} and prints a table.

  The config is checked (and its placeholders resolved) before any data is
  read, unless it is one resolve_and_validate returned (main.py's), and
  against the data's sizes before anything is written.
  """
  config = config_lib.resolve_and_validate(config)
  check_workdir(workdir)
  mesh = parallel.make_mesh(config.num_devices)
  data = dataset_lib.load(config.data)
  config_lib.validate_against_data(config, data.info)
  record_config(workdir, config)
  logging.info('%s.', data.info.describe())
  ctx = common.Context(
    config=config, dataset=data, mesh=mesh, workdir=workdir, hooks=tuple(hooks)
  )
  rows, state1 = {}, None
  if config.stage1.enabled:
    state1 = stage1.train(ctx)
    rows['stage1'] = common.evaluate(ctx, state1, 'stage1')
  if (config.stage2.enabled or config.dlsa.enabled) and state1 is None:
    state1 = stage2.load_stage1(ctx)
  if config.stage2.enabled:
    # An agreed point (see preemption): a SIGTERM during the evaluation
    # above stops here; stage 1 is saved and re-evaluated on the re-run.
    preemption.stop_between('stage2', workdir)
    rows['stage2'] = stage2.run(ctx, state1)
  if config.dlsa.enabled:
    preemption.stop_between('dlsa', workdir)
    rows['dlsa'] = dlsa_stage.run(ctx, state1)
  report.write_summary(workdir, rows, data.info)
  return rows
