"""Every edit the parity harness makes to a copy of the authors' code, with
why, and the code that applies them.

The user's checkouts are never edited: `prepare` copies one to a scratch
folder and edits the copy. An edit replaces an anchor text that must occur
exactly once in its file, or adds a file; a checkout whose text differs
(another commit) stops the harness with the file and the anchor, never a
silently different run. `python benchmarks/parity/edits.py` prints the list
as Markdown; benchmarks/parity/EDITS.md is that output (a test keeps them
equal).
"""

import dataclasses
import os
import shutil
import sys


class EditError(RuntimeError):
  """A checkout the edits do not fit."""


@dataclasses.dataclass(frozen=True)
class Edit:
  path: str  # relative to the checkout
  why: str
  anchor: str = ''  # kind 'replace': text found exactly once, replaced
  new: str = ''  # the replacement, the new file, or the appended text
  kind: str = 'replace'  # 'replace', 'create' (a new file) or 'append'


def apply_edits(root: str, edits) -> None:
  """Applies `edits` to the checkout copy at `root`, in order; raises
  EditError naming the file and anchor of the first one that does not fit
  (nothing after it is applied)."""
  for e in edits:
    path = os.path.join(root, e.path)
    if e.kind == 'create':
      if os.path.exists(path):
        raise EditError(
          f'{e.path} exists already in {root}; the harness '
          'adds it and will not overwrite it.'
        )
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w', encoding='utf-8') as f:
        f.write(e.new)
      continue
    if not os.path.isfile(path):
      raise EditError(
        f'{e.path} is missing from {root}: is it a checkout of '
        'the authors\' repository?'
      )
    with open(path, encoding='utf-8') as f:
      text = f.read()
    if e.kind == 'append':
      text = text.rstrip('\n') + '\n' + e.new
    elif e.kind == 'replace':
      found = text.count(e.anchor)
      if found != 1:
        raise EditError(
          f'{e.path}: the anchor {e.anchor!r} occurs {found} times (needs '
          'exactly 1); this checkout differs from the code the harness was '
          'written for (benchmarks/parity/EDITS.md).'
        )
      text = text.replace(e.anchor, e.new)
    else:
      raise ValueError(f'unknown edit kind {e.kind!r}')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)


def prepare(checkout: str, scratch: str, edits, must_have=()) -> str:
  """A fresh edited copy of `checkout` (without .git) at `scratch`."""
  missing = [
    p for p in must_have if not os.path.isfile(os.path.join(checkout, p))
  ]
  if missing:
    raise EditError(
      f'{checkout} lacks {", ".join(missing)}: point the flag '
      "at a plain checkout of the authors' repository."
    )
  if os.path.exists(scratch):
    shutil.rmtree(scratch)
  shutil.copytree(checkout, scratch, ignore=shutil.ignore_patterns('.git'))
  apply_edits(scratch, edits)
  return scratch


# MiSLAS (dvlab-research/MiSLAS).

MISLAS_FILES = (
  'train_stage1.py',
  'train_stage2.py',
  'methods.py',
  'models/resnet_cifar.py',
  'datasets/sampler.py',
  'utils/logger.py',
  'utils/metric.py',
)

# The data set class the edited scripts read (new file, our code).
_MISLAS_DATASET = '''\
"""Added by lcreg_jax's parity harness (benchmarks/parity/edits.py): the
long-tailed splits lcreg_jax exported to one .npz (benchmarks/parity/
export.py), with CIFAR10_LT's transforms at that data's size, zero padding,
flip setting and training-set mean/std."""

import numpy as np
from PIL import Image
import torch
from torchvision import transforms

from .sampler import ClassAwareSampler


class ArraySplit(torch.utils.data.Dataset):
  """uint8 (N, H, W, C) images and labels, as torchvision's CIFAR10 serves
  them (a PIL image per sample, then the transform)."""

  def __init__(self, images, labels, transform):
    self.data = images
    self.targets = [int(y) for y in labels]
    self.transform = transform

  def __len__(self):
    return len(self.targets)

  def __getitem__(self, index):
    image = self.data[index]
    image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return self.transform(image), self.targets[index]


class ParityNPZ(object):
  """CIFAR10_LT's loaders (train_instance, train_balance, eval) over the
  exported arrays; eval is the test split, as in CIFAR10_LT."""

  def __init__(self, path, batch_size=128, num_works=0):
    arrays = np.load(path)
    height, width = arrays['train_images'].shape[1:3]
    normalize = transforms.Normalize(arrays['mean'].tolist(),
                                     arrays['std'].tolist())
    augment = [transforms.RandomCrop((height, width),
                                     padding=int(arrays['pad']))]
    if bool(arrays['flip']):
      augment.append(transforms.RandomHorizontalFlip())
    train = ArraySplit(arrays['train_images'], arrays['train_labels'],
                       transforms.Compose(augment + [transforms.ToTensor(),
                                                     normalize]))
    test = ArraySplit(arrays['test_images'], arrays['test_labels'],
                      transforms.Compose([transforms.ToTensor(), normalize]))
    self.cls_num_list = np.bincount(train.targets).tolist()
    self.dist_sampler = None
    self.train_instance = torch.utils.data.DataLoader(
        train, batch_size=batch_size, shuffle=True, num_workers=num_works)
    self.train_balance = torch.utils.data.DataLoader(
        train, batch_size=batch_size, shuffle=False, num_workers=num_works,
        sampler=ClassAwareSampler(train))
    self.eval = torch.utils.data.DataLoader(
        test, batch_size=batch_size, shuffle=False, num_workers=num_works)
'''

_MISLAS_BACKBONE = '''

def parity_resnet_fe():
  # Added by lcreg_jax's parity harness: ResNet_fe with {blocks} basic
  # block(s) per stage (ResNet-{depth}) on {channels}-channel images.
  net = ResNet_fe(BasicBlock, [{blocks}, {blocks}, {blocks}])
  net.conv1 = nn.Conv2d({channels}, 16, kernel_size=3, stride=1, padding=1,
                        bias=False)
  init.kaiming_normal_(net.conv1.weight)
  return net
'''

_ZEROS = (
  '    class_num = torch.zeros(config.num_classes).cuda()\n'
  '    correct = torch.zeros(config.num_classes).cuda()\n'
)
_ZEROS_CPU = (
  '    class_num = torch.zeros(config.num_classes)\n'
  '    correct = torch.zeros(config.num_classes)\n'
)
_DATA_BRANCH = (
  "    if config.dataset == 'cifar10':\n        dataset = CIFAR10_LT("
)
_DATA_BRANCH_NEW = (
  "    if config.dataset == 'parity_npz':\n"
  '        dataset = ParityNPZ(config.data_path, '
  'batch_size=config.batch_size, '
  'num_works=config.workers)\n'
  "    elif config.dataset == 'cifar10':\n"
  '        dataset = CIFAR10_LT('
)


def mislas_edits(channels: int, blocks: int) -> list[Edit]:
  """The edits for images of `channels` channels and a ResNet_fe with
  `blocks` basic blocks per stage (1: ResNet-8, 5: ResNet-32)."""
  edits = [
    Edit(
      'datasets/parity_npz.py',
      kind='create',
      new=_MISLAS_DATASET,
      why='Reads the long-tailed splits exported from lcreg_jax\'s data '
      'API, so both sides train and test on the same images; the '
      'transforms are CIFAR10_LT\'s (random crop after zero '
      'padding, horizontal flip, ToTensor, Normalize) with our '
      'image size, padding, flip setting and training-set mean/std '
      'instead of the CIFAR-10 constants; eval is the test split '
      'and train_balance uses MiSLAS\'s own ClassAwareSampler.',
    ),
    Edit(
      'models/resnet_cifar.py',
      kind='append',
      new=_MISLAS_BACKBONE.format(
        blocks=blocks, channels=channels, depth=6 * blocks + 2
      ),
      why='A ResNet_fe of the depth lcreg_jax trains (model.backbone) on '
      'the data\'s channel count: MiSLAS has only resnet32_fe, with '
      'a 3-channel first convolution. Same blocks, shortcut A and '
      'Kaiming-normal initialisation as ResNet_fe.',
    ),
  ]
  for script in ('train_stage1.py', 'train_stage2.py'):
    edits += [
      Edit(
        script,
        'import the added data set class',
        'from datasets.cifar10 import CIFAR10_LT\n',
        'from datasets.cifar10 import CIFAR10_LT\n'
        'from datasets.parity_npz import ParityNPZ\n',
      ),
      Edit(
        script,
        "Builds the CIFAR model and 64-wide Classifier for the "
        "added data set name 'parity_npz' too.",
        "    if config.dataset == 'cifar10' or config.dataset == 'cifar100':\n",
        "    if config.dataset in ('cifar10', 'cifar100', 'parity_npz'):\n",
      ),
      Edit(
        script,
        "Loads the exported arrays when dataset is "
        "'parity_npz' (config data_path is the .npz).",
        _DATA_BRANCH,
        _DATA_BRANCH_NEW,
      ),
      Edit(
        script,
        'The seed comes from the config (key seed, added to '
        'utils/logger.py): the authors fix it to 0 whenever '
        'deterministic is set, so seeds could not differ.',
        '        seed = 0\n',
        '        seed = config.seed\n',
      ),
      Edit(
        script,
        'CPU: the per-class counters of validate() are moved '
        'to CUDA unconditionally, which fails without a GPU.',
        _ZEROS,
        _ZEROS_CPU,
      ),
    ]
  edits += [
    Edit(
      'train_stage2.py',
      'torch >= 2.6 loads checkpoints with '
      'weights_only=True, which rejects the NumPy float (its_ece) '
      'MiSLAS saves in them; the file is the harness\'s own stage-1 '
      'checkpoint.',
      '                checkpoint = torch.load(config.resume)\n',
      '                checkpoint = torch.load(config.resume, '
      'weights_only=False)\n',
    ),
    Edit(
      'methods.py',
      'CPU: mixup moves its permutation to CUDA by '
      'default; it now goes to the images\' device (the same draw).',
      '        index = torch.randperm(batch_size).cuda()\n',
      '        index = torch.randperm(batch_size).to(x.device)\n',
    ),
    Edit(
      'utils/logger.py',
      'The config key seed (default 0, the '
      'authors\' value) read by the seed edit above.',
      '_C.deterministic = True\n',
      '_C.deterministic = True\n_C.seed = 0\n',
    ),
  ]
  for name in ('bin_accuracies', 'bin_confidences'):
    edits.append(
      Edit(
        'utils/metric.py',
        'NumPy >= 1.24 removed the alias np.float '
        '(calibration() fails at the first evaluation); float is what it '
        'meant.',
        f'    {name} = np.zeros(num_bins, dtype=np.float)\n',
        f'    {name} = np.zeros(num_bins, dtype=float)\n',
      )
    )
  edits.append(
    Edit(
      'utils/metric.py',
      'NumPy >= 1.24 removed the alias np.int; int is what it meant.',
      '    bin_counts = np.zeros(num_bins, dtype=np.int)\n',
      '    bin_counts = np.zeros(num_bins, dtype=int)\n',
    )
  )
  edits.append(
    Edit(
      'utils/metric.py',
      'accuracy() views a transposed (non-contiguous) '
      'tensor, which torch >= 1.5 refuses; reshape gives the same values.',
      '            correct_k = correct[:k].view(-1).float().sum(0, '
      'keepdim=True)\n',
      '            correct_k = correct[:k].reshape(-1).float().sum(0, '
      'keepdim=True)\n',
    )
  )
  return edits


# DLSA (silicx/DLSA).

DLSA_FILES = (
  'train_dlsa.py',
  'utils/io.py',
  'utils/datasets.py',
  'solvers/regular_classifier.py',
  'solvers/cluster_aided_classifier.py',
)

_DLSA_ROWS = '''

def _parity_rows(mask):
    # Added by lcreg_jax's parity harness: which rows of a masked "test"
    # loader choose the classifier's epoch. The harness's "test" split is
    # [validation; test] (PARITY_NUM_VAL validation rows first);
    # PARITY_SELECT=val chooses on the validation rows, =test (the
    # authors') on the test rows. Neither changes any test prediction's
    # inputs: flows, thresholds and priors come from the training split.
    n_val = int(os.environ.get("PARITY_NUM_VAL", "0"))
    is_val = np.arange(len(mask)) < n_val
    rows = is_val if os.environ.get("PARITY_SELECT", "test") == "val" else ~is_val
    return rows[np.asarray(mask, dtype=bool)]

'''

# The depth-0 control: the authors' regular classifier on every training
# sample (new file, our glue around their functions).
_DLSA_CONTROL = '''\
"""Added by lcreg_jax's parity harness (benchmarks/parity/edits.py): DLSA's
depth-0 control, the authors' regular classifier (their get_classifier,
samplers, loaders, train_regular_classifier and eval_regular_classifier,
with the regcls settings of --cfg) on all training features, no flow and no
routing. Writes <root_dir>/<name>/parity_test_pred.npy like train_dlsa.py.
"""

import os
import os.path as osp
import random

import numpy as np
import torch

from models.Classifiers import get_classifier
from solvers.regular_classifier import eval_regular_classifier
from solvers.regular_classifier import train_regular_classifier
from train_dlsa import _parity_rows
from utils.datasets import get_data_sampler
from utils.datasets import make_tensor_dataloader
from utils.datasets import read_h5_data
from utils.io import parse_args
from utils.io import prepare_log_dir
from utils.utils import numpy2torch


def main():
  cfg = parse_args()
  seed = int(os.environ.get("PARITY_SEED", "0"))
  random.seed(seed)
  np.random.seed(seed)
  torch.manual_seed(seed)
  features, labels = read_h5_data(cfg)
  cfg.update("feat_dim", features["test"].shape[1])
  save_dir, writer = prepare_log_dir(cfg)
  features = numpy2torch(features)
  labels = numpy2torch(labels, to_long=True)
  model = get_classifier(cfg.regcls.model, cfg)
  sampler = get_data_sampler(cfg.regcls.data.sampler, labels["train"])
  train_loader = make_tensor_dataloader(
      [features, features, labels], None, "train", cfg.regcls.data.batchsize,
      num_workers=cfg.regcls.data.num_workers, shuffle=(sampler is None),
      sampler=sampler)
  test_loader = make_tensor_dataloader(
      [features, features, labels], None, "test", cfg.regcls.data.batchsize,
      shuffle=False)
  cfg.update("parity_rows", _parity_rows(np.ones(len(labels["test"]), bool)))
  train_label = labels["train"].numpy()
  model = train_regular_classifier(model, train_loader, test_loader,
                                   train_label=train_label,
                                   all_train_label=train_label, args=cfg)
  pred, _, _ = eval_regular_classifier(model, cfg, test_loader)
  np.save(osp.join(save_dir, "parity_test_pred.npy"), pred)
  writer.close()


if __name__ == "__main__":
  main()
'''

_SELECT_ROWS = '''\
            pred, gt = pred[args.parity_rows], gt[args.parity_rows]
'''


_PARITY_SCORE = '''

def _parity_score(pred, gt):
    # Added by lcreg_jax's parity harness: the score that chooses the
    # epoch. PARITY_METRIC=image_mean is the authors' (accuracy over the
    # rows); class_mean, the mean of the per-class accuracies, is ours
    # (eval.select_metric), used when choosing on our unbalanced
    # validation rows.
    import os
    if os.environ.get("PARITY_METRIC", "image_mean") == "class_mean":
        return np.mean([np.mean(pred[gt == c] == c) for c in np.unique(gt)])
    return np.mean(pred == gt)
'''


def dlsa_edits() -> list[Edit]:
  edits = [
    Edit(
      'utils/io.py',
      'parse_args reads config/cls/BaseConfig.yaml, a '
      'path not in the repository; the file is config/BaseConfig.yaml.',
      'ConfigManager.init_with_yaml("config/cls/BaseConfig.yaml")',
      'ConfigManager.init_with_yaml("config/BaseConfig.yaml")',
    ),
    Edit(
      'utils/io.py',
      "The class count of the added dataset name "
      "'Parity' (the authors' table lists only ImageNet-LT, Places-LT "
      "and iNaturalist); the harness sets PARITY_NUM_CLASS.",
      '        "iNaturalist":  8142,\n',
      '        "iNaturalist":  8142,\n'
      '        "Parity": int(os.environ.get("PARITY_NUM_CLASS", "0")),'
      '\n',
    ),
    Edit(
      'train_dlsa.py',
      "Seeds Python's, NumPy's and torch's generators "
      'from PARITY_SEED: the authors seed nothing, so runs could not be '
      'repeated or paired with ours.',
      '    cfg = parse_args()\n',
      '    cfg = parse_args()\n'
      '    _parity_seed = int(os.environ.get("PARITY_SEED", "0"))\n'
      '    import random\n'
      '    random.seed(_parity_seed)\n'
      '    np.random.seed(_parity_seed)\n'
      '    torch.manual_seed(_parity_seed)\n',
    ),
    Edit(
      'train_dlsa.py',
      'Saves the final test predictions '
      '(divide_and_conquer returns them; the authors only log their '
      'accuracy over the whole "test" split, which here holds the '
      'validation rows too).',
      '    divide_and_conquer(features, features, labels, cfg, save_dir, '
      'writer, max_depth=cfg.max_depth)\n',
      '    np.save(osp.join(save_dir, "parity_test_pred.npy"), '
      'divide_and_conquer(features, features, labels, cfg, save_dir, '
      'writer, max_depth=cfg.max_depth))\n',
    ),
    Edit(
      'train_dlsa.py',
      'The row selector used by the selection edits below.',
      'from solvers.cluster_aided_classifier import '
      'train_cluster_aided_classifier, eval_cluster_aided_classifier\n',
      'from solvers.cluster_aided_classifier import '
      'train_cluster_aided_classifier, eval_cluster_aided_classifier\n'
      + _DLSA_ROWS,
    ),
    Edit(
      'train_dlsa.py',
      'Tells the cluster-aided classifier which rows '
      'of its evaluation loader choose its epoch.',
      '    cls_model_1 = train_cluster_aided_classifier(\n',
      '    args.update("parity_rows", _parity_rows(labelmap_index.test))'
      '\n    cls_model_1 = train_cluster_aided_classifier(\n',
    ),
    Edit(
      'train_dlsa.py',
      'The same for the regular classifier.',
      '        cls_model_2 = train_regular_classifier(\n',
      '        args.update("parity_rows", _parity_rows(mask["test"]))\n'
      '        cls_model_2 = train_regular_classifier(\n',
    ),
  ]
  for path, call in (
    (
      'solvers/cluster_aided_classifier.py',
      'pred, _, gt = eval_cluster_aided_classifier(cls_model, args, '
      'test_loader)\n',
    ),
    (
      'solvers/regular_classifier.py',
      'pred, _, gt = eval_regular_classifier(cls_model, args, test_loader)\n',
    ),
  ):
    edits.append(
      Edit(
        path,
        'The authors choose the epoch (every eval_freq) with the best '
        'accuracy on the test split; the choice (and its log line) now uses '
        'the rows _parity_rows picked: the test rows reproduce the authors\' '
        'choice, the validation rows make a choice that never reads test '
        'labels, as ours.',
        f'            {call}',
        f'            {call}{_SELECT_ROWS}',
      )
    )
    edits.append(
      Edit(
        path,
        'The epoch\'s score: the authors\' accuracy over the rows, or, '
        'with PARITY_METRIC=class_mean (the harness sets it when choosing '
        'on validation and our eval.select_metric is class_mean), the mean '
        'of the per-class accuracies, as ours chooses on the unbalanced '
        'validation split.',
        '            mean_acc = np.mean(pred==gt)\n',
        '            mean_acc = _parity_score(pred, gt)\n',
      )
    )
    edits.append(
      Edit(
        path,
        'Defines _parity_score (above).',
        new=_PARITY_SCORE,
        kind='append',
      )
    )
  edits.append(
    Edit(
      'parity_control.py',
      kind='create',
      new=_DLSA_CONTROL,
      why='DLSA\'s depth-0 control (our dlsa_depth0 row), which the authors\' '
      'train_dlsa.py cannot run (depth 1 always trains a flow and routes): '
      'their regular classifier on all training features, chosen and '
      'saved as in the edited train_dlsa.py.',
    )
  )
  return edits


def _markdown_edit(e: Edit) -> str:
  if e.kind == 'create':
    what = f'adds `{e.path}`'
  elif e.kind == 'append':
    what = f'appends to `{e.path}`:\n\n```python{e.new.rstrip()}\n```'
  else:
    what = (
      f'in `{e.path}` replaces\n\n```python\n{e.anchor.rstrip()}\n```'
      f'\n\nwith\n\n```python\n{e.new.rstrip()}\n```'
    )
  return f'{what}\n\nWhy: {e.why}'


def markdown() -> str:
  """benchmarks/parity/EDITS.md."""
  out = [
    '# Edits the parity harness makes to the authors\' code',
    '',
    'Generated by `python benchmarks/parity/edits.py` from '
    '`benchmarks/parity/edits.py`; do not edit by hand. The harness '
    'copies each checkout (without `.git`) to a scratch folder under '
    '`--out` and edits the copy; the user\'s checkout is never '
    'changed. An anchor that is not found exactly once stops the '
    'harness. Settings that are plain config values (epochs, '
    'learning rates, CPU device, workers) are written into config '
    'files of the harness, not edited in (see docs/benchmarks.md).',
    '',
    '## MiSLAS',
    '',
    'Shown for 1-channel images and ResNet-8 (the values are filled '
    'in from the data and `model.backbone`).',
    '',
  ]
  for i, e in enumerate(mislas_edits(channels=1, blocks=1), 1):
    out += [f'### M{i}', '', _markdown_edit(e), '']
  out += ['## DLSA', '']
  for i, e in enumerate(dlsa_edits(), 1):
    out += [f'### D{i}', '', _markdown_edit(e), '']
  return '\n'.join(out).rstrip() + '\n'


if __name__ == '__main__':
  if len(sys.argv) > 1:
    print(f'usage: {sys.argv[0]}\n\n{__doc__}')
    sys.exit(0 if sys.argv[1] in ('-h', '--help') else 2)
  sys.stdout.write(markdown())
