"""train_and_evaluate: stage 1 → stage 2 → DLSA, as the config says."""

import os

from absl import logging
import jax
import numpy as np

from lcreg_jax import config_base
from lcreg_jax import evaluate
from lcreg_jax import parallel
from lcreg_jax import retrain
from lcreg_jax import train
from lcreg_jax.data import pipeline
from lcreg_jax.data import sources


def run_dlsa_stage(config, dataset, state1, workdir, mesh, norm) -> dict:
  """DLSA on frozen stage-1 features (DESIGN §6); selects on val only."""
  from lcreg_jax import dlsa  # pylint: disable=g-import-not-at-top
  feats = {}
  for name, split in (('train', dataset.train), ('val', dataset.val),
                      ('test', dataset.test)):
    if split is not None:
      pred = train.predict(state1, split, mesh=mesh,
                           batch_size=config.eval.batch_size, mean=norm[0],
                           std=norm[1])
      feats[name] = (pred['features'], split.labels)
  if 'val' not in feats:
    # No validation split in the data: carve one from the training features
    # (never from test), leaving stage 1 untouched.
    tr, val = sources.carve_val(sources.Split(*feats['train']),
                                dataset.num_classes, config.dlsa.val_per_class)
    feats['train'], feats['val'] = (tr.images, tr.labels), (val.images,
                                                            val.labels)
  stage_dir = os.path.join(workdir, 'dlsa')
  os.makedirs(stage_dir, exist_ok=True)
  result = dlsa.run_dlsa(config.dlsa, train=feats['train'], val=feats['val'],
                         test=feats['test'], num_classes=dataset.num_classes,
                         workdir=stage_dir, log=logging.info)
  metrics = evaluate.compute_metrics(
      result.test_probs, dataset.test.labels, dataset.class_counts,
      many_threshold=config.eval.many_threshold,
      few_threshold=config.eval.few_threshold, num_bins=config.eval.num_bins,
      are_probs=True)
  metrics.update(stage='dlsa', val_accuracy=result.val_accuracy,
                 routing=result.stage_report)
  if jax.process_index() == 0:
    evaluate.write_report(os.path.join(stage_dir, 'report.json'), metrics)
    if config.eval.plots:
      evaluate.save_plots(os.path.join(stage_dir, 'plots'), result.test_probs,
                          dataset.test.labels, dataset.class_counts,
                          num_bins=config.eval.num_bins)
  return metrics


def train_and_evaluate(config, workdir: str, hooks=()) -> dict:
  """Runs the enabled stages; returns {stage: metrics} and prints a table."""
  config_base.validate(config)
  mesh = parallel.make_mesh(config.num_devices)
  dataset = sources.load_dataset(config.data)
  logging.info('%s: %d train (%d..%d per class), %d test, %d classes.',
               dataset.name, len(dataset.train.labels),
               dataset.class_counts.max(), dataset.class_counts.min(),
               len(dataset.test.labels), dataset.num_classes)
  # Normalisation comes from the training split so that every stage, and a
  # later evaluation, sees the same input statistics.
  norm = pipeline.normalization_stats(dataset.train.images)
  os.makedirs(workdir, exist_ok=True)
  rows, state1 = {}, None
  if config.stage1.enabled:
    state1 = train.train_stage1(config, dataset, workdir, mesh, norm, hooks)
    rows['stage1'] = train.evaluate_and_report(
        state1, dataset, config, mesh=mesh, norm=norm,
        stage_dir=os.path.join(workdir, 'stage1'), stage='stage1')
  if (config.stage2.enabled or config.dlsa.enabled) and state1 is None:
    state1 = retrain.load_stage1(config, dataset, workdir, mesh)
  if config.stage2.enabled:
    state2 = retrain.train_stage2(config, dataset, workdir, mesh, norm, state1,
                                  hooks)
    rows['stage2'] = train.evaluate_and_report(
        state2, dataset, config, mesh=mesh, norm=norm,
        stage_dir=os.path.join(workdir, 'stage2'), stage='stage2')
  if config.dlsa.enabled:
    rows['dlsa'] = run_dlsa_stage(config, dataset, state1, workdir, mesh, norm)
  if jax.process_index() == 0:
    table = evaluate.format_table(rows)
    if 'dlsa' in rows:
      table += '\n' + evaluate.format_routing(rows['dlsa']['routing'])
    print(f'\n{dataset.name}, test set of {len(dataset.test.labels)} '
          f'(accuracies and ECE in %):\n{table}\n', flush=True)
    evaluate.write_report(
        os.path.join(workdir, 'summary.json'),
        {k: {m: v for m, v in r.items() if np.isscalar(v) or v is None}
         for k, r in rows.items()})
  return rows
