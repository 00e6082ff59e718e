"""The README and docs/ tell the truth: the paths they name exist, the
commands they show run (with --help), the config keys they set are real,
and their results tables and key reference are what the code and the run
records generate."""

import functools
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from lcreg_jax.config import base
from lcreg_jax.config import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')
# Top-level folders and files of the repository a page may name.
_TOP = (
  'lcreg_jax',
  'configs',
  'benchmarks',
  'tests',
  'docs',
  'launch',
  'notebooks',
  'results',
  '.ci',
)
_PATH = re.compile(
  r'(?<![\w/.~-])((?:'
  + '|'.join(re.escape(t) for t in _TOP)
  + r')/[\w./-]*|README\.md|CHANGELOG\.md|pyproject\.toml'
  r'|requirements\.txt)'
)
_LINK = re.compile(r'\]\(([^)\s]+)\)')
_CMD = re.compile(r'python3? (-m lcreg_jax(?:\.\w+)+|benchmarks/[\w/]+\.py)')
_KEY = re.compile(r'--config\.([\w.]+)')
_CONFIG = re.compile(r'--config=([\w./-]+\.py)(?::(\w+))?')


def pages() -> list[str]:
  """README.md and every page in docs/, relative to the root."""
  return ['README.md'] + sorted(
    os.path.join('docs', f) for f in os.listdir(DOCS) if f.endswith('.md')
  )


def read(rel: str) -> str:
  with open(os.path.join(ROOT, rel)) as f:
    return f.read()


def snippets(text: str) -> list[str]:
  """Code blocks (continuation lines joined) and inline code spans: what a
  reader would copy."""
  out = []
  for block in re.findall(r'```[^\n]*\n(.*?)```', text, re.S):
    out += block.replace('\\\n', ' ').split('\n')
  prose = re.sub(r'```.*?```', '', text, flags=re.S)
  out += [s.replace('\n', ' ') for s in re.findall(r'`([^`]+)`', prose)]
  return out


def mentioned_paths(rel: str) -> set[str]:
  """Repository paths a page names (placeholders such as <root>, *, ...
  or NAME left out) and the targets of its relative links, relative to the
  root."""
  text = read(rel)
  found = set()
  for path in _PATH.findall(text):
    path = path.rstrip('.,;:')
    if not re.search(r'[<>*{}…]|\.\.\.|(^|/)[A-Z][A-Z_]+(\.|/|$)', path):
      found.add(path)
  for target in _LINK.findall(text):
    target = target.split('#')[0]
    if target and not re.match(r'[a-z]+:', target):
      found.add(os.path.normpath(os.path.join(os.path.dirname(rel), target)))
  return found


def anchors(rel: str) -> set[str]:
  """GitHub's anchors of a page's headings."""
  out = set()
  for heading in re.findall(
    r'^#+ (.+)$', re.sub(r'```.*?```', '', read(rel), flags=re.S), re.M
  ):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    out.add(slug)
  return out


@pytest.mark.parametrize('page', pages())
def test_every_link_anchor_exists(page):
  bad = []
  for target in _LINK.findall(read(page)):
    if '#' not in target or re.match(r'[a-z]+:', target):
      continue
    path, anchor = target.split('#', 1)
    rel = (
      os.path.normpath(os.path.join(os.path.dirname(page), path))
      if path
      else page
    )
    if (
      rel.endswith('.md')
      and os.path.exists(os.path.join(ROOT, rel))
      and (anchor not in anchors(rel))
    ):
      bad.append(target)
  assert not bad, f'{page} links to headings that do not exist: {bad}'


@pytest.mark.parametrize('page', pages())
def test_every_path_a_page_names_exists(page):
  missing = sorted(
    p
    for p in mentioned_paths(page)
    if not os.path.exists(os.path.join(ROOT, p))
  )
  assert not missing, f'{page} names paths that do not exist: {missing}'


def shown_commands() -> dict[str, list[str]]:
  """{module or script: [pages showing it]} of the commands in the pages."""
  cmds = {}
  for page in pages():
    for snippet in snippets(read(page)):
      for cmd in _CMD.findall(snippet):
        cmds.setdefault(cmd, []).append(page)
  return cmds


@functools.lru_cache(maxsize=None)
def _help_runs():
  """Runs every shown command with --help, all at once (one subprocess per
  distinct module or script): {command: (exit code, output)}."""
  env = dict(
    os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')
  )
  procs = {}
  for cmd in shown_commands():
    args = cmd.split() if cmd.startswith('-m') else [cmd]
    procs[cmd] = subprocess.Popen(
      [sys.executable, *args, '--help'],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
  return {
    cmd: (p.wait(timeout=300), p.stdout.read()) for cmd, p in procs.items()
  }


def test_the_pages_show_commands():
  cmds = shown_commands()
  assert '-m lcreg_jax.main' in cmds
  assert 'benchmarks/collect_results.py' in cmds


@pytest.mark.parametrize('cmd', sorted(shown_commands()))
def test_every_shown_command_runs_with_help(cmd):
  code, out = _help_runs()[cmd]
  assert code == 0, (
    f'python {cmd} --help (shown in '
    f'{shown_commands()[cmd]}) exited {code}:\n{out[-2000:]}'
  )


def _load_config(path: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(
    '_doc_config', os.path.join(ROOT, path)
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _has_key(config, key: str) -> bool:
  node = config
  for part in key.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def config_keys_shown() -> list[tuple[str, str, str, str | None]]:
  """(page, key, config path or '', its argument) of every --config.KEY
  shown; placeholders in capitals (KEY, *) are left out."""
  out = []
  for page in pages():
    for snippet in snippets(read(page)):
      config = _CONFIG.search(snippet)
      path, arg = (config.group(1), config.group(2)) if config else ('', None)
      for key in _KEY.findall(snippet):
        key = key.rstrip('.')
        if key.split('.')[-1].isupper() or not key:
          continue
        out.append((page, key, path, arg))
  return out


def test_every_config_key_shown_is_a_key_of_its_config():
  assert len(config_keys_shown()) > 20
  loaded = {}
  bad = []
  for page, key, path, arg in config_keys_shown():
    if path and os.path.isfile(os.path.join(ROOT, path)):
      if (path, arg) not in loaded:
        loaded[(path, arg)] = _load_config(path, arg)
      config = loaded[(path, arg)]
    else:
      config = base.base_config()
    if not _has_key(config, key):
      bad.append(f'{page}: --config.{key} ({path or "base config"})')
  assert not bad, 'unknown config keys shown:\n' + '\n'.join(bad)


def test_results_pages_equal_what_the_records_generate():
  spec = importlib.util.spec_from_file_location(
    '_collect_results', os.path.join(ROOT, 'benchmarks', 'collect_results.py')
  )
  collect = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(collect)
  generated = collect.generated_pages(ROOT)
  assert 'docs/results.md' in generated and 'README.md' in generated
  stale = [rel for rel, text in generated.items() if read(rel) != text]
  assert not stale, (
    f'{stale} differ from what results/ gives: run python '
    'benchmarks/collect_results.py --markdown'
  )


def test_config_key_reference_is_up_to_date():
  text = read('docs/configs.md')
  assert reference.page_with_reference(text) == text, (
    'docs/configs.md: run python -m lcreg_jax.config.reference --write'
  )
  for key in ('stage1.alpha', 'model.latent.num_latents', 'dlsa.flow_steps'):
    assert f'| `{key}` |' in text


def test_readme_is_short_and_links_every_page():
  readme = read('README.md')
  assert len(readme.splitlines()) <= 250
  unlinked = [p for p in pages()[1:] if f']({p}' not in readme]
  assert not unlinked, f'README.md does not link {unlinked}'


def test_nothing_cites_a_file_outside_the_repository():
  # The method is specified in docs/method.md; the former design file lived
  # outside the repository, where users cannot read it.
  needle = 'DESI' + 'GN'
  tracked = subprocess.run(
    ['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True
  ).stdout.split()
  if not tracked:
    pytest.skip('not a git checkout')
  citing = []
  for rel in tracked:
    if rel.endswith(('.py', '.md', '.ipynb', '.toml', '.txt', '.sh')):
      with open(os.path.join(ROOT, rel), errors='replace') as f:
        if needle in f.read():
          citing.append(rel)
  assert not citing, f'{citing} cite {needle}; cite docs/method.md sections'


def test_config_docstrings_give_command_and_the_recorded_result():
  import ast  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top

  for rel in sorted(
    p for p in os.listdir(os.path.join(ROOT, 'configs')) if p.endswith('.py')
  ):
    doc = ast.get_docstring(ast.parse(read(os.path.join('configs', rel))))
    assert 'Command:' in doc and 'Result to expect' in doc, rel
  with open(os.path.join(ROOT, 'results', 'default.json')) as f:
    record = json.load(f)
  doc = ast.get_docstring(ast.parse(read('configs/default.py')))
  for stage in ('stage1', 'stage2'):
    m = record['metrics'][stage]
    shown = ' / '.join(
      f'{100 * m[k]:.2f}' for k in ('top1', 'many', 'medium', 'few')
    )
    assert shown in doc, f'configs/default.py: {stage} {shown} not in docstring'
