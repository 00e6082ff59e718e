"""The config key reference of docs/configs.md, generated from the code.

  python -m lcreg_jax.config.reference            # print it
  python -m lcreg_jax.config.reference --write    # update docs/configs.md

Walks `base_config()` for every key, its type and its default, and takes
each key's description from the comments next to it in
lcreg_jax/config/base.py and lcreg_jax/config/dlsa.py: the block of comment
lines right above the key's line, then the comment on that line (`NOTES`
below for the few keys without one). The reference
sits in docs/configs.md between `<!-- config-keys -->` and
`<!-- /config-keys -->`; a test checks it is up to date.
"""

import argparse
import ast
import io
import os
import re
import sys
import tokenize

from ml_collections import config_dict

from lcreg_jax.config import base
from lcreg_jax.config import dlsa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PAGE = os.path.join(ROOT, 'docs', 'configs.md')
# Descriptions of the keys that have no comment in the config code.
NOTES = {
    'seed': 'initialisation, data order, mixup and augmentation draws',
    'data.channels': 'image channels (1 for digits and Fashion-MNIST)',
    'data.digits_test_per_class': 'digits: balanced test images per class',
    'data.num_classes': 'C, the number of classes',
    'data.pad': 'crop: zero padding before the random crop',
    'data.tfds_name': 'source=tfds or tfds_stream: the TFDS data set name',
    'data.tfds_data_dir': "the prepared TFDS directory ('' = TFDS's default)",
    'dlsa.enabled': 'run DLSA after stage 1 (docs/dlsa.md)',
    'dlsa.seed': "seed of DLSA's flows, pairs and classifiers",
    'dlsa.bn_eps': "the flow BatchNorm's epsilon",
    'dlsa.center_std': 'std of the fixed random cluster centres',
    'dlsa.flow_momentum': "SGD momentum of the flow (authors: 0)",
    'dlsa.flow_steps': 'flow training steps per routing stage',
    'dlsa.top_fraction': "share of the remaining training samples (by log p) "
                         "each routing stage takes",
    'dlsa.select_min_purity': "flow_select_metric=authors: a cluster's "
                              'purity must exceed this',
    'dlsa.select_min_size': 'flow_select_metric=authors: and its size this',
    'dlsa.select_cap_factor': 'flow_select_metric=authors: largest cluster '
                              'at most N / K times this',
    'dlsa.classifier_steps': 'training steps of each DLSA classifier',
    'dlsa.classifier_weight_decay': "AdamW's weight decay",
    'dlsa.classifier_batch_size': 'batch of the DLSA classifiers',
    'eval.batch_size': 'evaluation batch (global)',
    'eval.few_threshold': 'few-shot: fewer training images than this',
    'eval.many_threshold': 'many-shot: more training images than this',
    'eval.num_bins': 'equal-width bins of ECE and MCE',
    'eval.plots': "write each stage's plots",
    'model.backbone': 'resnet8 | resnet32 | resnet10 | resnet50 | resnet152',
    'model.dtype': 'float32 | bfloat16 (convolutions only)',
    'model.shortcut': 'ResNet-32 shortcut: A (zero-padded identity) | B '
                      '(projection)',
    'model.latent.enabled': 'the LCReg latent module (False: MiSLAS)',
    'model.latent.num_latents': 'M, the number of latent categories',
    'model.latent.tau_assign': 'τ of the assignment softmax (eq. 2)',
    'model.latent.recon_normalize': 'reconstruction loss on L2-normalised '
                                    'rows',
    'model.latent.recon_temperature': 'recon_normalize: the temperature',
    'model.latent.explicit_latent_aug': 'reconstruct from Z + ε, '
                                        'ε ~ N(0, λΣ), in training',
    'stage1.enabled': 'train stage 1',
    'stage1.epochs': 'length of stage 1 in epochs',
    'stage1.batch_size': 'global batch',
    'stage1.lr': 'peak learning rate', 'stage1.momentum': 'SGD momentum',
    'stage1.weight_decay': 'L2 weight decay',
    'stage1.warmup_epochs': 'schedule=step: warm-up length in epochs',
    'stage1.decay_epochs': 'schedule=step: epochs at which the lr decays',
    'stage1.decay_factor': 'schedule=step: factor of each decay',
    'stage2.enabled': 'train stage 2',
    'stage2.epochs': 'length of stage 2 in epochs',
    'stage2.steps': 'None: from epochs; set, it wins over epochs',
    'stage2.lr': 'base learning rate (cosine over the stage)',
    'stage2.momentum': 'SGD momentum',
    'stage2.samples_per_class': 'class-balanced sampler: consecutive '
                                'samples per class',
    'stage2.shift_bn': 'None: the preset row; re-estimate BatchNorm '
                       'statistics on balanced batches',
    'stage2.lr_factor': "None: the preset row; the classifier's lr factor",
}
_BLOCK = re.compile(r'(<!-- config-keys -->\n).*?(<!-- /config-keys -->)',
                    re.S)


def _comments(source: str):
  """{line: inline comment} and {line: full-line comment} of `source`."""
  inline, full = {}, {}
  code_lines = set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      text = tok.string.lstrip('#').strip()
      (inline if tok.start[0] in code_lines else full)[tok.start[0]] = text
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENCODING):
      code_lines.add(tok.start[0])
  return inline, full


def _description(line, inline, full) -> str:
  """The block of comment lines right above `line`, then the comment on it.
  (A block describes the line below it only.)"""
  above = []
  j = line - 1
  while j in full:
    above.insert(0, full[j])
    j -= 1
  return ' '.join(above + ([inline[line]] if line in inline else []))


def _key_lines(source: str, root_name: str) -> dict[str, int]:
  """{dotted key: line} of the keys `source` defines (`c.x = ...` and the
  keywords of `c.x = ConfigDict(dict(...))`), under `root_name`."""
  lines = {}

  def target_name(node):
    parts = []
    while isinstance(node, ast.Attribute):
      parts.insert(0, node.attr)
      node = node.value
    return '.'.join(parts) if isinstance(node, ast.Name) else None

  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
      continue
    name = target_name(node.targets[0])
    if name is None:
      continue
    prefix = f'{root_name}.{name}' if root_name else name
    call = node.value
    dict_call = (isinstance(call, ast.Call) and call.args
                 and isinstance(call.args[0], ast.Call)
                 and getattr(call.args[0].func, 'id', '') == 'dict')
    if dict_call:
      for kw in call.args[0].keywords:
        lines[f'{prefix}.{kw.arg}'] = kw.value.lineno
    else:
      lines[prefix] = node.lineno
  return lines


def _described_keys() -> dict[str, str]:
  out = {}
  for module, root_name in ((base, ''), (dlsa, 'dlsa')):
    with open(module.__file__) as f:
      source = f.read()
    inline, full = _comments(source)
    for key, line in _key_lines(source, root_name).items():
      out[key] = _description(line, inline, full)
  return out


def _walk(cfg, prefix=''):
  for key in cfg.keys():
    field = cfg._fields[key]  # pylint: disable=protected-access
    value = cfg[key]
    name = f'{prefix}{key}'
    if isinstance(value, config_dict.ConfigDict):
      yield from _walk(value, name + '.')
    else:
      kind = (field.get_type() if isinstance(field, config_dict.FieldReference)
              else type(value))
      yield name, kind, value


def _fmt_default(value) -> str:
  if value is None:
    return 'None'
  if isinstance(value, str):
    return f"`'{value}'`"
  return f'`{value!r}`'


def reference() -> str:
  """The Markdown key reference: a table per section of the config."""
  described = _described_keys()
  sections = {}
  for name, kind, value in _walk(base.base_config()):
    section = name.rsplit('.', 1)[0] if '.' in name else '(top level)'
    desc = (described.get(name) or NOTES.get(name, '')).replace('|', '\\|')
    type_name = getattr(kind, '__name__', str(kind))
    sections.setdefault(section, []).append(
        f'| `{name}` | {type_name} | {_fmt_default(value)} | {desc} |')
  out = []
  for section, rows in sections.items():
    out += [f'### `{section}`' if section != '(top level)' else
            '### Top level', '', '| key | type | default | meaning |',
            '|---|---|---|---|', *rows, '']
  return '\n'.join(out).rstrip('\n')


def page_with_reference(text: str) -> str:
  if not _BLOCK.search(text):
    raise SystemExit('error: docs/configs.md has no <!-- config-keys --> '
                     'block.')
  return _BLOCK.sub(lambda m: f'{m.group(1)}{reference()}\n{m.group(2)}',
                    text)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--write', action='store_true',
                      help='update the reference in docs/configs.md')
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
