"""DLSA after stage 1 (docs/method.md §6), on the frozen stage-1 pooled features;
selects on validation only, never on the test split.

DLSA is single-host: its flows and classifiers are small, so every process
gathers all the features (`common.predict` returns the whole split on each
process) and runs the same DLSA on its first local device. The inputs,
seeds and programs are the same on every process, and so are the results;
checkpoints hold host copies (`checkpoints.savable`), reports are written
by process 0, and every process passes the same preemption points.
"""

from lcreg_jax import dlsa
from lcreg_jax.data import sources
from lcreg_jax.evaluate import report
from lcreg_jax.stages import common


def run(ctx: common.Context, stage1_state) -> dict:
  """Trains DLSA and returns its test report (routing shares included)."""
  config = ctx.config
  feats = {}
  for split in ('train', 'val', 'test'):
    if ctx.info.has_split(split):
      pred = common.predict(ctx, stage1_state, split)
      feats[split] = (pred['features'], pred['labels'])
  if 'val' not in feats:
    # No validation split in the data: carve one from the training features
    # (never from test), leaving stage 1 untouched.
    tr, val = sources.carve_val(
      sources.Split(*feats['train']),
      ctx.info.num_classes,
      config.dlsa.val_per_class,
    )
    feats['train'] = (tr.images, tr.labels)
    feats['val'] = (val.images, val.labels)
  result = dlsa.run_dlsa(
    config.dlsa,
    train=feats['train'],
    val=feats['val'],
    test=feats['test'],
    num_classes=ctx.info.num_classes,
    workdir=ctx.stage_dir('dlsa'),
    select_metric=config.eval.select_metric,
    checkpoint_every=config.checkpoint_every,
    hooks=ctx.hooks,
  )
  extra = dict(
    val_accuracy=result.val_accuracy,
    routing=result.stage_report,
    select_metric=config.eval.select_metric,
  )
  if result.control_test_probs is not None:
    # The depth-0 control gets its own report (benchmarks/collect_results.py
    # prints it as row 'dlsa_depth0') and its headline numbers in DLSA's.
    control = report.write_stage_report(
      ctx.stage_dir('dlsa_depth0'),
      stage='dlsa_depth0',
      outputs=result.control_test_probs,
      labels=feats['test'][1],
      info=ctx.info,
      eval_config=config.eval,
      are_probs=True,
      extra=dict(val_accuracy=result.control_val_accuracy),
    )
    extra['depth0'] = {
      m: control.get(m)
      for m in ('top1', 'many', 'medium', 'few', 'ece', 'nll', 'val_accuracy')
    }
  return report.write_stage_report(
    ctx.stage_dir('dlsa'),
    stage='dlsa',
    outputs=result.test_probs,
    labels=feats['test'][1],
    info=ctx.info,
    eval_config=config.eval,
    are_probs=True,
    extra=extra,
  )
