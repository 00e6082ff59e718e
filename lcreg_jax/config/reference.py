"""The config key reference of docs/configs.md, generated from the key
declarations (`Field`s of lcreg_jax/config/base.py and dlsa.py).

  python -m lcreg_jax.config.reference            # print it
  python -m lcreg_jax.config.reference --write    # update docs/configs.md

One table per section of the config: each key, its type, its default and
its doc. The reference sits in docs/configs.md between `<!-- config-keys -->`
and `<!-- /config-keys -->`; a test checks it is up to date.
"""

import argparse
import os
import re
import sys

from lcreg_jax.config import base

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
PAGE = os.path.join(ROOT, 'docs', 'configs.md')
_BLOCK = re.compile(r'(<!-- config-keys -->\n).*?(<!-- /config-keys -->)', re.S)


def _fmt_default(value) -> str:
  if value is None:
    return 'None'
  if isinstance(value, str):
    return f"`'{value}'`"
  return f'`{value!r}`'


def reference() -> str:
  """The Markdown key reference: a table per section of the config."""
  sections = {}
  for f in sorted(base.ALL_FIELDS, key=lambda f: f.key):
    section = f.key.rsplit('.', 1)[0] if '.' in f.key else '(top level)'
    kind = f.type or type(f.default)
    doc = f.doc.replace('|', '\\|')
    sections.setdefault(section, []).append(
      f'| `{f.key}` | {kind.__name__} | {_fmt_default(f.default)} | {doc} |'
    )
  out = []
  for section, rows in sections.items():
    out += [
      f'### `{section}`' if section != '(top level)' else '### Top level',
      '',
      '| key | type | default | meaning |',
      '|---|---|---|---|',
      *rows,
      '',
    ]
  return '\n'.join(out).rstrip('\n')


def page_with_reference(text: str) -> str:
  if not _BLOCK.search(text):
    raise SystemExit(
      'error: docs/configs.md has no <!-- config-keys --> block.'
    )
  return _BLOCK.sub(lambda m: f'{m.group(1)}{reference()}\n{m.group(2)}', text)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--write',
    action='store_true',
    help='update the reference in docs/configs.md',
  )
  args = parser.parse_args(argv)
  if not args.write:
    print(reference())
    return
  with open(PAGE) as f:
    text = f.read()
  new = page_with_reference(text)
  if new != text:
    with open(PAGE, 'w') as f:
      f.write(new)
  print(f'{"updated" if new != text else "up to date"}: {PAGE}')


if __name__ == '__main__':
  main(sys.argv[1:])
