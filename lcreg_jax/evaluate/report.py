"""The one report writer: every stage's test metrics go through
`write_stage_report` (report.json + plots), and the run's table through
`write_summary` (summary.json + the printed table). Only process 0 writes;
every file is written atomically.
"""

import jax
import numpy as np

from lcreg_jax import files
from lcreg_jax.evaluate import metrics as metrics_lib
from lcreg_jax.evaluate import plots


def _json_safe(x):
  # NaN/inf are not JSON; null keeps the report readable by any parser.
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_json(path, report: dict):
  """Writes JSON atomically (a crash never leaves half a report)."""
  files.write_json(path, _json_safe(report), indent=2)


def compute_metrics(
  outputs, labels, info, eval_config, are_probs: bool = False
) -> dict:
  """docs/method.md §7's metrics with the shot groups of the training counts."""
  return metrics_lib.compute_metrics(
    outputs,
    labels,
    info.class_counts,
    many_threshold=eval_config.many_threshold,
    few_threshold=eval_config.few_threshold,
    num_bins=eval_config.num_bins,
    are_probs=are_probs,
  )


def write_stage_report(
  stage_dir: str,
  *,
  stage: str,
  outputs,
  labels,
  info,
  eval_config,
  are_probs: bool = False,
  latent_usage=None,
  extra: dict | None = None,
) -> dict:
  """Metrics of one stage on the test split; writes report.json and plots.

  Args:
    stage_dir: the stage's folder in the workdir.
    stage: its name in the report and the summary table.
    outputs: (N, C) logits, or probabilities with `are_probs`.
    labels: (N,) test labels.
    info: the data set's `DatasetInfo` (class counts give the shot groups).
    eval_config: `config.eval`.
    latent_usage: (M,) positions won by each latent category, if any.
    extra: more entries for the report (e.g. DLSA's routing).
  Returns:
    The report as a dict.
  """
  report = compute_metrics(outputs, labels, info, eval_config, are_probs)
  report['stage'] = stage
  if latent_usage is not None:
    report['latent_usage'] = [int(x) for x in latent_usage]
  report.update(extra or {})
  if jax.process_index() == 0:
    write_json(files.as_path(stage_dir) / 'report.json', report)
    if eval_config.plots:
      probs = (
        np.asarray(outputs)
        if are_probs
        else np.asarray(jax.nn.softmax(np.asarray(outputs)))
      )
      plots.save_plots(
        files.as_path(stage_dir) / 'plots',
        probs,
        labels,
        info.class_counts,
        latent_usage,
        eval_config.num_bins,
      )
  return report


def write_summary(workdir: str, rows: dict[str, dict], info) -> str:
  """Prints the stages' headline numbers and writes summary.json."""
  table = format_table(rows)
  if 'dlsa' in rows:
    table += '\n' + format_routing(rows['dlsa']['routing'])
  if jax.process_index() == 0:
    print(
      f'\n{info.name}, test set of {info.split_sizes["test"]} '
      f'(accuracies and ECE in %):\n{table}\n',
      flush=True,
    )
    write_json(
      files.as_path(workdir) / 'summary.json',
      {
        k: {m: v for m, v in r.items() if np.isscalar(v) or v is None}
        for k, r in rows.items()
      },
    )
  return table


def format_routing(routing: dict) -> str:
  """DLSA: share and accuracy of the test samples each stage handled."""
  parts = []
  for stage, r in sorted(routing.items(), key=lambda kv: int(kv[0])):
    name = f'stage {stage}' if int(stage) < len(routing) - 1 else 'final'
    acc = r.get('accuracy')
    # A stage that took no test sample has no accuracy (None or NaN).
    acc = '-' if acc is None or not np.isfinite(acc) else f'{100 * acc:.1f}%'
    parts.append(f'{name}: {100 * r["share"]:.1f}% of test, top-1 {acc}')
  return 'DLSA routing: ' + '; '.join(parts)


def format_table(rows: dict[str, dict]) -> str:
  """A small text table of the headline numbers, one row per stage."""
  cols = ['top1', 'many', 'medium', 'few', 'ece', 'nll']
  if any(m.get('top1_best_val') is not None for m in rows.values()):
    cols.insert(1, 'top1_best_val')  # the best-on-validation model's top-1
  lines = ['| stage | ' + ' | '.join(cols) + ' |', '|---|' + '---|' * len(cols)]
  for name, m in rows.items():
    cells = []
    for c in cols:
      v = m.get(c)
      if v is None:
        cells.append('-')
      elif c in ('top1', 'top1_best_val', 'many', 'medium', 'few', 'ece'):
        cells.append(f'{100 * v:.2f}')
      else:
        cells.append(f'{v:.3f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
