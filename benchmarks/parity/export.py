"""What both sides read: the long-tailed images of a config (one .npz for
the edited MiSLAS) and the stage-1 features of one of our runs (DLSA's h5
layout, `read_h5_data`), both from lcreg_jax's own APIs."""

import os

import flax
import h5py
import numpy as np

from lcreg_jax import config as config_lib
from lcreg_jax import inference
from lcreg_jax.config import dlsa as dlsa_config
from lcreg_jax.data import augment
from lcreg_jax.data import dataset
from lcreg_jax.data import sources
from lcreg_jax.dlsa import run as dlsa_run
from lcreg_jax.models import pretrained


def load_arrays(config) -> sources.LongTailDataset:
  """The in-memory splits a run of `config` trains and tests on."""
  resolved = config_lib.resolve_and_validate(config, num_visible_devices=1)
  return sources.load_dataset(resolved.data)


def image_arrays(data: sources.LongTailDataset, data_config) -> dict:
  """The .npz contents: the splits as uint8 (N, H, W, C) and int64 labels,
  the training-set mean/std our pipeline normalises with, the zero padding
  of the random crop and whether images are mirrored (data.augment)."""
  if data_config.augment not in ('crop_flip', 'crop', 'flip', 'none'):
    raise ValueError(
      f'data.augment={data_config.augment!r}: the parity '
      'export covers the CIFAR-style augmentations only.'
    )
  mean, std = augment.normalization_stats(data.train.images)
  out = dict(
    mean=mean,
    std=std,
    pad=np.int64(
      data_config.pad if data_config.augment in ('crop_flip', 'crop') else 0
    ),
    flip=np.bool_(data_config.augment in ('crop_flip', 'flip')),
  )
  splits = {'train': data.train, 'test': data.test}
  if data.val is not None:
    splits['val'] = data.val
  for name, split in splits.items():
    out[f'{name}_images'] = np.asarray(split.images, np.uint8)
    out[f'{name}_labels'] = np.asarray(split.labels, np.int64)
  return out


def write_npz(path: str, arrays: dict) -> str:
  """Writes `arrays` to `path` atomically (a half-written file never looks
  finished to a resumed run)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def stage1_features(workdir: str, splits=('train', 'val', 'test')) -> dict:
  """{split: (features (N, D) float32, labels (N,))} of the final stage-1
  model of our run in `workdir`, for the splits the data has."""
  model = inference.load_workdir(workdir, stage='stage1', which='final')
  data = dataset.load(model.config.data)
  out = {}
  for split in (s for s in splits if data.info.has_split(s)):
    images, labels = inference.split_arrays(
      data, split, model.config.eval.batch_size
    )
    out[split] = (
      np.asarray(model.predict(images)['features'], np.float32),
      np.asarray(labels),
    )
  return out


def mislas_state_dicts(workdir: str) -> dict:
  """The final stage-1 model of our run in `workdir` as MiSLAS's two state
  dicts (`torch_state_dicts`), for its stage 2."""
  return torch_state_dicts(
    inference.load_workdir(workdir, stage='stage1', which='final').variables
  )


def torch_state_dicts(variables) -> dict:
  """Our CIFAR ResNet + linear head as MiSLAS's ResNet_fe and Classifier
  state dicts, {'model.<name>': array, 'classifier.fc.<name>': array}, in
  PyTorch's layouts (OIHW convolutions, (out, in) linear weights). Raises
  ValueError for a variable they lack (e.g. a latent module)."""
  flat = {
    k: np.asarray(v)
    for k, v in flax.traverse_util.flatten_dict(variables).items()
  }
  out = {}
  for path, name in pretrained.torchvision_name_map(flat).items():
    x = flat.pop(path)
    out[f'model.{name}'] = x.transpose(3, 2, 0, 1) if x.ndim == 4 else x
  for leaf, name in (('kernel', 'weight'), ('bias', 'bias')):
    x = flat.pop(('params', 'head', 'fc', leaf), None)
    if x is not None:
      out[f'classifier.fc.{name}'] = x.T
  if flat:
    raise ValueError(
      "MiSLAS's ResNet_fe and Classifier have no counterpart for "
      + ', '.join('/'.join(k) for k in sorted(flat))
      + '; run our side with the baseline config (no latent module).'
    )
  return out


def dlsa_splits(feats: dict, num_classes: int, val_per_class: int) -> dict:
  """train/val/test features exactly as our DLSA stage gets them
  (lcreg_jax/stages/dlsa.py: a validation split carved from the training
  features when the data has none) and standardises them
  (lcreg_jax/dlsa/run.py, training mean/std)."""
  feats = dict(feats)
  if 'val' not in feats:
    train, val = sources.carve_val(
      sources.Split(*feats['train']), num_classes, val_per_class
    )
    feats['train'] = (train.images, train.labels)
    feats['val'] = (val.images, val.labels)
  cfg = dlsa_config.dlsa_config()
  cfg.standardize = True
  return dlsa_run._standardized(  # pylint: disable=protected-access
    {s: feats[s] for s in ('train', 'val', 'test')}, cfg
  )


def write_dlsa_h5(folder: str, splits: dict) -> int:
  """feature_train.h5 and feature_test.h5 (datasets `features`, `labels`)
  as DLSA's read_h5_data reads them; the "test" file holds the validation
  rows first, then the test rows. Returns the number of validation rows."""
  os.makedirs(folder, exist_ok=True)
  val_x, val_y = splits['val']
  test_x, test_y = splits['test']
  files = {
    'train': splits['train'],
    'test': (np.concatenate([val_x, test_x]), np.concatenate([val_y, test_y])),
  }
  for name, (x, y) in files.items():
    path = os.path.join(folder, f'feature_{name}.h5')
    tmp = f'{path}.{os.getpid()}.tmp'
    with h5py.File(tmp, 'w') as f:
      f.create_dataset('features', data=np.asarray(x, np.float32))
      f.create_dataset('labels', data=np.asarray(y, np.int64))
    os.replace(tmp, path)
  return len(val_y)
