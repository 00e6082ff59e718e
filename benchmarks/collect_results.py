"""Collects results into Markdown tables: of workdirs, or of run records.

  python benchmarks/collect_results.py NAME=WORKDIR[,WORKDIR...] ...
  python benchmarks/collect_results.py --markdown [--check]

With NAME=WORKDIR arguments it prints one table of the runs' report.json
files: one row per NAME and stage found; with several workdirs (seeds) the
cells are mean ± std over them.

With --markdown it reads the run records in results/ (one JSON file per run,
written by benchmarks/record_run.py) and writes docs/results.md, and the
blocks between `<!-- results:TABLE:FORM[:STAGES] -->` and
`<!-- /results -->` in README.md and docs/*.md (FORM `table`: the table,
only the comma-separated STAGES if given; `summary`: the table as the run
prints it). Every results table of the documentation comes from
here. With --check nothing is written: it exits 1 when a page differs from
what the records give.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'results')
RESULTS_PAGE = os.path.join('docs', 'results.md')

# dlsa_depth0: DLSA's depth-0 control (the final classifier alone).
STAGES = ('stage1', 'stage2', 'dlsa', 'dlsa_depth0')
# top1_best_val: test top-1 of the stage's best-on-validation parameters
# (runs with a validation split; '-' otherwise).
COLS = ('top1', 'many', 'medium', 'few', 'ece', 'nll', 'top1_best_val')

# Headings of the record tables (a record names its table by key); a key
# not listed here is its own heading.
TABLES = {
  'default': 'Default config (digits-LT, IF 10)',
  'default_dlsa': 'Default config with DLSA (digits-LT, IF 10)',
  'dlsa_switches': "DLSA's switches on the default config's stage 1 "
  '(digits-LT, IF 10)',
  'pods_tau_norm': 'configs/baselines/tau_norm.py:default on 1 process '
  'and on 2 (digits-LT, IF 10)',
  'pods_dlsa': 'configs/default.py with DLSA on 1 process and on 2 '
  '(digits-LT, IF 10)',
}


def _cell(values, col):
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  scale = 1 if col == 'nll' else 100
  fmt = '{:.3f}' if col == 'nll' else '{:.2f}'
  mean = fmt.format(scale * np.mean(values))
  if len(values) == 1:
    return mean
  return f'{mean} ± {fmt.format(scale * np.std(values, ddof=1))}'


def _rows_table(rows, cols=COLS, routing=False) -> str:
  """rows: (name, stage, [metrics dict per run]) → a Markdown table; with
  `routing`, a last column of DLSA's test share per routing stage."""
  extra = ['routing, % of test'] if routing else []
  lines = [
    '| method | stage | runs | ' + ' | '.join(list(cols) + extra) + ' |',
    '|---|---|---|' + '---|' * (len(cols) + len(extra)),
  ]
  for name, stage, runs in rows:
    cells = [_cell([r.get(c) for r in runs], c) for c in cols]
    if routing:
      shares = [r.get('routing_share') for r in runs]
      cells.append(
        ' / '.join(f'{100 * x:.1f}' for x in shares[0])
        if len(runs) == 1 and shares[0]
        else '-'
      )
    lines.append(
      f'| {name} | {stage} | {len(runs)} | ' + ' | '.join(cells) + ' |'
    )
  return '\n'.join(lines)


def table(runs) -> str:
  """The Markdown table of `runs`, (name, [workdir, ...]) pairs: one row
  per name and stage found, mean ± sample std over the workdirs."""
  from lcreg_jax import files  # pylint: disable=g-import-not-at-top

  rows = []
  for name, dirs in runs:
    for stage in STAGES:
      reports = [
        files.read_json(files.as_path(d) / stage / 'report.json')
        for d in dirs
        if (files.as_path(d) / stage / 'report.json').exists()
      ]
      if reports:
        rows.append((name, stage, reports))
  return _rows_table(rows)


# Run records.


def load_records(results_dir: str = RESULTS) -> dict[str, dict]:
  """{file name without .json: record} of every record, sorted by name."""
  records = {}
  for path in sorted(glob.glob(os.path.join(results_dir, '*.json'))):
    with open(path) as f:
      records[os.path.basename(path)[:-5]] = json.load(f)
  return records


def _by_table(records):
  """{table: [(name, record), ...]}, each table's records in the order
  they were made (date, then name)."""
  tables = {}
  for name, rec in sorted(
    records.items(), key=lambda kv: (kv[1]['date'], kv[0])
  ):
    tables.setdefault(rec['table'], []).append((name, rec))
  return tables


def record_table(entries, stages=STAGES) -> str:
  """One table of the records `entries` ((name, record) pairs of a table):
  a row per label and stage (of `stages`), mean ± sample std over the
  label's records."""
  labels = {}
  for _, rec in entries:
    labels.setdefault(rec['label'], []).append(rec)
  cols = [
    c
    for c in COLS
    if c != 'top1_best_val'
    or any(
      'top1_best_val' in m for _, r in entries for m in r['metrics'].values()
    )
  ]
  rows = []
  for label, recs in labels.items():
    for stage in stages:
      runs = [r['metrics'][stage] for r in recs if stage in r['metrics']]
      if runs:
        rows.append((label, stage, runs))
  routing = any('routing_share' in runs[0] for _, _, runs in rows)
  return _rows_table(rows, cols, routing)


def summary_block(rec) -> str:
  """The table as `python -m lcreg_jax.main` prints it at the end."""
  from lcreg_jax.evaluate import report  # pylint: disable=g-import-not-at-top

  data = rec['data']
  return (
    f'```\n{data["name"]}, test set of {data["test_examples"]} '
    f'(accuracies and ECE in %):\n'
    f'{report.format_table(rec["metrics"])}\n```'
  )


def _hours(seconds):
  m, s = divmod(int(round(seconds)), 60)
  return f'{m} min {s} s' if m else f'{s} s'


def provenance(entries) -> str:
  """A line per record: where the numbers come from."""
  lines = []
  for name, rec in entries:
    note = f' {rec["note"]}' if rec.get('note') else ''
    lines.append(
      f'- `results/{name}.json`: `{rec["command"]}`; '
      f'{rec["data"]["name"]}, {rec["data"]["test_examples"]} test '
      f'images; {_hours(rec["wall_s"])} wall on {rec["machine"]}; '
      f'{rec["date"]}, commit {rec["git_commit"][:10]}, config '
      f'{rec["config_hash"]}.{note}'
    )
  return '\n'.join(lines)


def results_page(records) -> str:
  out = [
    '# Results',
    '',
    'Generated by `python benchmarks/collect_results.py --markdown` '
    'from the run records in `results/`; do not edit it by hand. '
    'Each record holds the command, a hash of the resolved config, '
    'the git commit, the date, the machine, the wall time and the '
    'metrics of one run (`python benchmarks/record_run.py` writes '
    'one). Accuracies and ECE are in %, NLL in nats; `runs` is the '
    'number of records (seeds) in a row, and with more than one the '
    'cells are mean ± sample standard deviation.',
  ]
  for key, entries in _by_table(records).items():
    out += [
      '',
      f'## {TABLES.get(key, key)}',
      '',
      record_table(entries),
      '',
      provenance(entries),
    ]
  return '\n'.join(out) + '\n'


_BLOCK = re.compile(
  r'(<!-- results:([\w-]+):(table|summary)(?::([\w,]+))? -->\n)'
  r'.*?(<!-- /results -->)',
  re.S,
)


def fill_blocks(text: str, records) -> str:
  """`text` with every results block regenerated from `records`."""
  tables = _by_table(records)

  def repl(m):
    key, form = m.group(2), m.group(3)
    stages = tuple(m.group(4).split(',')) if m.group(4) else STAGES
    if key not in tables:
      raise SystemExit(
        f'error: a results block names table {key!r}, which '
        f'no record in results/ has ({", ".join(tables)}).'
      )
    body = (
      record_table(tables[key], stages)
      if form == 'table'
      else summary_block(tables[key][0][1])
    )
    return f'{m.group(1)}{body}\n{m.group(5)}'

  return _BLOCK.sub(repl, text)


def generated_pages(root: str = ROOT, results_dir: str | None = None):
  """{path relative to root: the text the records give} of every page with
  results: docs/results.md and the Markdown files holding results blocks."""
  records = load_records(results_dir or os.path.join(root, 'results'))
  pages = {RESULTS_PAGE: results_page(records)}
  for rel in ['README.md'] + sorted(
    os.path.relpath(p, root)
    for p in glob.glob(os.path.join(root, 'docs', '*.md'))
  ):
    if rel == RESULTS_PAGE:
      continue
    with open(os.path.join(root, rel)) as f:
      text = f.read()
    if _BLOCK.search(text):
      pages[rel] = fill_blocks(text, records)
  return pages


def write_markdown(root: str = ROOT, check: bool = False) -> list[str]:
  """Writes (or with `check` only compares) the pages; returns those that
  differed."""
  stale = []
  for rel, text in generated_pages(root).items():
    path = os.path.join(root, rel)
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
      stale.append(rel)
      if not check:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        with open(path, 'w') as f:
          f.write(text)
  return stale


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n')[0],
    usage='%(prog)s NAME=WORKDIR[,WORKDIR...] ... | --markdown [--check]',
  )
  parser.add_argument('runs', nargs='*', metavar='NAME=WORKDIR[,WORKDIR...]')
  parser.add_argument(
    '--markdown',
    action='store_true',
    help='write docs/results.md and the results blocks '
    'from the records in results/',
  )
  parser.add_argument(
    '--check',
    action='store_true',
    help='with --markdown: write nothing, exit 1 when a page is stale',
  )
  args = parser.parse_args(argv)
  if args.markdown:
    stale = write_markdown(check=args.check)
    verb = 'stale' if args.check else 'written'
    print(f'{verb}: {", ".join(stale)}' if stale else 'up to date')
    if args.check and stale:
      sys.exit(1)
    return
  if not args.runs:
    parser.error('give NAME=WORKDIR arguments or --markdown')
  runs = []
  for arg in args.runs:
    # The workdirs follow the last '=' (names may contain one).
    name, dirs = arg.rsplit('=', 1)
    runs.append((name, dirs.split(',')))
  print(table(runs))


if __name__ == '__main__':
  main()
