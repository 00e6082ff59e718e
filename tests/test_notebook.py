"""notebooks/quickstart.ipynb, executed top to bottom in its fast mode
(LCREG_NOTEBOOK_FAST=1): every cell runs, every figure is drawn, the
models loaded back predict what the run reported, and the final summary
holds numbers above chance. The committed copy carries no outputs."""

import json
import os
import pathlib
import re

import nbformat
import pytest

NOTEBOOK = (
  pathlib.Path(__file__).resolve().parent.parent
  / 'notebooks'
  / ('quickstart.ipynb')
)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def test_committed_notebook_has_no_stale_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in _code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, cell.source


@pytest.mark.slow
def test_notebook_runs_and_reports_above_chance(monkeypatch):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv('LCREG_NOTEBOOK_FAST', '1')
  # The kernel runs as a user's would: one CPU device and XLA's default
  # optimisation (the suite's settings suit tiny models, not ResNet-32).
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # A failing cell raises CellExecutionError here, with its traceback.
  NotebookClient(
    nb,
    timeout=300,
    kernel_name='python3',
    resources={'metadata': {'path': str(NOTEBOOK.parent)}},
  ).execute()
  cells = _code_cells(nb)

  def stdout(cell):
    return ''.join(
      o.get('text', '')
      for o in cell.outputs
      if o.output_type == 'stream' and o.name == 'stdout'
    )

  def images(cell):
    return sum('image/png' in o.get('data', {}) for o in cell.outputs)

  # Each plotting cell (the ones ending in plt.show()) drew its figure:
  # class counts, per-class accuracy, reliability, Figure 4, latent usage by
  # class, DLSA routing.
  plotting = [c for c in cells if 'plt.show()' in c.source]
  assert len(plotting) == 6
  assert [images(c) for c in plotting] == [1] * 6
  # The progress line was shown while training.
  training = next(c for c in cells if 'train_and_evaluate' in c.source)
  assert re.search(
    r'stage1: step 60/60 \(100%\) · [\d,]+ img/s', stdout(training)
  )
  # Predictions of the models loaded from the workdir equal the report's.
  loaded = re.findall(
    r'(stage\d): top-1 ([\d.]+)% from the loaded model, '
    r'([\d.]+)% in the report',
    ''.join(map(stdout, cells)),
  )
  assert [s for s, _, _ in loaded] == ['stage1', 'stage2']
  assert all(a == b for _, a, b in loaded)
  summary = json.loads(stdout(cells[-1]).strip().splitlines()[-1])
  assert set(summary) == {'stage1', 'stage2', 'dlsa'}
  for stage, row in summary.items():
    assert 0.0 <= row['top1'] <= 1.0 and row['nll'] > 0, (stage, row)
  assert summary['stage2']['top1'] > 0.1 + 0.2  # chance is 1/10
  assert os.environ['LCREG_NOTEBOOK_FAST'] == '1'
