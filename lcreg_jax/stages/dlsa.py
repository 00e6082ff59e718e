"""DLSA after stage 1 (DESIGN §6), on the frozen stage-1 pooled features;
selects on validation only, never on the test split."""

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
    tr, val = sources.carve_val(sources.Split(*feats['train']),
                                ctx.info.num_classes,
                                config.dlsa.val_per_class)
    feats['train'] = (tr.images, tr.labels)
    feats['val'] = (val.images, val.labels)
  result = dlsa.run_dlsa(
      config.dlsa, train=feats['train'], val=feats['val'], test=feats['test'],
      num_classes=ctx.info.num_classes, workdir=ctx.stage_dir('dlsa'),
      checkpoint_every=config.checkpoint_every, hooks=ctx.hooks)
  return report.write_stage_report(
      ctx.stage_dir('dlsa'), stage='dlsa', outputs=result.test_probs,
      labels=feats['test'][1], info=ctx.info, eval_config=config.eval,
      are_probs=True, extra=dict(val_accuracy=result.val_accuracy,
                                 routing=result.stage_report))
