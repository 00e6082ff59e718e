"""Load a trained workdir and predict: probabilities, pooled features and
the latent categories' assignment maps (the paper's Figure 4).

    from lcreg_jax import inference
    model = inference.load_workdir('workdirs/default', stage='stage2')
    images, labels = model.eval_split('test')     # the model's input
    out = model.predict(images)
    out['probs']        # (N, C) softmax of the logits the report scored
    out['features']     # (N, D) pooled features the classifier sees
    out['assignments']  # (N, H, W, M) soft assignment of each feature-map
                        # position to the M latent categories (LCReg only)

Everything comes from the workdir: the model from its config.json, the class
count and input shape from the checkpoints' fingerprint.json, and only the
parameters and BatchNorm statistics from the checkpoint (no optimizer state,
no latent moments, no data). `predict` takes images as the evaluation
pipeline feeds them (normalised); `eval_split` gives those of a split.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lcreg_jax import checkpoints
from lcreg_jax import errors
from lcreg_jax import files
from lcreg_jax import parallel
from lcreg_jax.config import base
from lcreg_jax.config import validate
from lcreg_jax.models import network

STAGES = ('stage1', 'stage2')
WHICH = ('final', 'best_on_val')


def _merged(defaults: dict, stored: dict) -> dict:
  """`stored` over `defaults`, recursively: a workdir written before a key
  existed gets that key's default (which is what the run used)."""
  out = dict(defaults)
  for k, v in stored.items():
    out[k] = (
      _merged(defaults[k], v)
      if isinstance(v, dict) and isinstance(defaults.get(k), dict)
      else v
    )
  return out


def read_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config a run recorded in `<workdir>/config.json`."""
  path = files.as_path(workdir) / 'config.json'
  if not path.exists():
    raise errors.CheckpointError(
      f'{path} does not exist, so {workdir} is not the workdir of a run '
      '(every run writes its config there before training). Pass the '
      'directory given as --workdir to the run.'
    )
  return ml_collections.ConfigDict(
    _merged(base.base_config().to_dict(), files.read_json(path))
  )


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A trained stage's model with its variables, ready to predict."""

  config: ml_collections.ConfigDict
  stage: str
  step: int
  num_classes: int
  image_shape: tuple
  model: nn.Module
  variables: dict

  @functools.cached_property
  def _apply(self):
    def apply(variables, images):
      out = self.model.apply(variables, images, train=False)
      res = dict(
        logits=out['logits'],
        probs=jax.nn.softmax(out['logits']),
        features=out['features'],
      )
      if 'assignment' in out:
        res['assignments'] = out['assignment']
      return res

    return jax.jit(apply)

  def predict(self, images, batch_size: int = 256) -> dict:
    """Model outputs for (N, *image_shape) float images, in batches.

    Returns NumPy arrays: 'probs' and 'logits' (N, C), 'features' (N, D),
    and with a latent module 'assignments' (N, H, W, M), each position's
    weights over the M latent categories (they sum to 1).
    """
    images = np.asarray(images, np.float32)
    if images.ndim and not len(images):
      raise errors.DataError(
        'predict got no images (an empty batch); pass at least one.'
      )
    if images.shape[1:] != tuple(self.image_shape):
      raise errors.DataError(
        f'predict got images of shape {images.shape[1:]} but the model was '
        f'trained on {tuple(self.image_shape)} (height, width, channels). '
        'Pass images prepared as the evaluation pipeline does, e.g. those '
        'of eval_split().'
      )
    outs = []
    for i in range(0, len(images), batch_size):
      chunk = images[i : i + batch_size]
      n = len(chunk)
      if n < batch_size and i:  # pad the last batch: one compiled shape
        chunk = np.concatenate(
          [chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)]
        )
      res = jax.device_get(self._apply(self.variables, chunk))
      outs.append({k: v[:n] for k, v in res.items()})
    result = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    if 'assignments' in result:
      result['assignments'] = self._as_maps(result['assignments'])
    return result

  def _as_maps(self, assignments):
    """(N, P, M) → (N, H, W, M): the backbone keeps the image's aspect."""
    n, p, m = assignments.shape
    ih, iw = self.image_shape[:2]
    h = max(1, int(round(math.sqrt(p * ih / iw))))
    return assignments.reshape(n, h, p // h, m)

  def eval_split(
    self, split: str = 'test', limit: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a split of the run's data set, as the evaluation
    pipeline feeds them to the model (reads the data set)."""
    # Imported here: the data modules import TensorFlow, which predict()
    # on in-memory images does not need.
    from lcreg_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top

    return split_arrays(
      dataset_lib.load(self.config.data),
      split,
      self.config.eval.batch_size,
      limit,
    )


def split_arrays(
  data, split: str = 'test', batch_size: int = 256, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a split of a loaded data set (`data.dataset.load`)
  through its evaluation pipeline: every example once, in order; the first
  `limit` only when given."""
  if not data.info.has_split(split):
    raise errors.DataError(
      f'The data set has no {split!r} split (it has '
      f'{", ".join(data.info.split_sizes)}).'
    )
  mesh = parallel.make_mesh(1)
  images, labels = [], []
  for batch in data.eval_batches(
    split, global_batch_size=batch_size, sharding=parallel.batch_sharding(mesh)
  ):
    host = parallel.to_host(batch)
    keep = host['mask'] > 0
    images.append(host['image'][keep])
    labels.append(host['label'][keep])
    if limit is not None and sum(map(len, labels)) >= limit:
      break
  images, labels = np.concatenate(images), np.concatenate(labels)
  return images[:limit], labels[:limit]


def load_workdir(
  workdir, stage: str = 'stage2', which: str = 'final'
) -> Predictor:
  """The model of a trained stage of the run in `workdir`.

  Args:
    workdir: the run's --workdir (local or e.g. gs://).
    stage: 'stage1' or 'stage2'.
    which: 'final' (the last step, what report.json's `top1` scores) or
      'best_on_val' (the parameters kept for the best validation score by
      eval.select_metric).
  """
  if stage not in STAGES or which not in WHICH:
    raise errors.ConfigError(
      f'load_workdir(stage={stage!r}, which={which!r}): stage must be one '
      f'of {", ".join(STAGES)} and which one of {", ".join(WHICH)}. DLSA '
      'routes between several classifiers of its own; its results are in '
      '<workdir>/dlsa/report.json.'
    )
  config = read_config(workdir)
  method = config.stage2.method
  if stage == 'stage2' and method in validate.POSTHOC_METHODS:
    raise errors.ConfigError(
      f'Stage 2 of {workdir} is stage2.method={method}, a post-hoc '
      'adjustment of the stage-1 model (τ in stage2/report.json); it trains '
      'and saves no model. Load stage="stage1" and apply the τ of the '
      'report to its outputs.'
    )
  folder = 'checkpoints' if which == 'final' else 'best_on_val'
  directory = files.as_path(workdir) / stage / folder
  fingerprint_path = directory / 'fingerprint.json'
  if not fingerprint_path.exists():
    raise errors.CheckpointError(
      f'{directory} holds no checkpoints of {stage} ({which}). Has the '
      f'stage run in this workdir? ({stage} enabled, and for best_on_val '
      'a validation split with eval.select_on_val=True.)'
    )
  fingerprint = files.read_json(fingerprint_path)
  num_classes = int(fingerprint['num_classes'])
  image_shape = tuple(int(x) for x in fingerprint['image_shape'])
  model_config = ml_collections.ConfigDict(
    _merged(base.base_config().model.to_dict(), fingerprint['model'])
  )
  model = network.make_model(
    model_config, num_classes, lws=stage == 'stage2' and method != 'crt'
  )
  template = jax.eval_shape(
    functools.partial(model.init, train=False),
    {'params': jax.random.key(0)},
    jax.ShapeDtypeStruct((1, *image_shape), np.float32),
  )
  target = dict(
    params=template['params'], batch_stats=template.get('batch_stats', {})
  )
  step, variables = checkpoints.read_variables(directory, target)
  return Predictor(
    config=config,
    stage=stage,
    step=step,
    num_classes=num_classes,
    image_shape=image_shape,
    model=model,
    variables=variables,
  )
