"""The stage-2 step: MiSLAS classifier retraining on a frozen trunk (docs/method.md §4).

The stage-1 classifier is fine-tuned with a learnable per-class scale (LWS)
under label-aware smoothing; with shift learning on BatchNorm the running
statistics are re-estimated on the class-balanced batches while every
BatchNorm scale and offset stays frozen.
"""

import dataclasses

import jax
import jax.numpy as jnp

from lcreg_jax import losses
from lcreg_jax.train_state import all_finite


@dataclasses.dataclass(frozen=True)
class RetrainHparams:
  """Static hyper-parameters of the stage-2 step (hashable for jit)."""

  class_counts: tuple[int, ...]
  las_head: float
  las_tail: float
  las_shape: str
  las_power: float | None
  shift_bn: bool
  # 'las' (MiSLAS) or 'ce': cRT and LWS (Kang et al.) train with plain CE.
  loss: str = 'las'

  @classmethod
  def from_config(cls, stage2_config, class_counts) -> 'RetrainHparams':
    """From the resolved `config.stage2` and the training class counts."""
    c = stage2_config
    mislas = c.get('method', 'mislas') == 'mislas'
    return cls(
      class_counts=tuple(int(n) for n in class_counts),
      las_head=c.las_head,
      las_tail=c.las_tail,
      las_shape=c.las_shape,
      las_power=c.las_power,
      shift_bn=bool(c.shift_bn) and mislas,
      loss='las' if mislas else 'ce',
    )


def retrain_step(state, batch, *, hp: RetrainHparams):
  """One step of label-aware smoothing on the LWS head.

  Only the head is differentiated: the frozen trunk needs its forward pass
  (and, with shift BN, its batch statistics) but no backward pass, which
  makes the step about three times cheaper than masking full gradients.
  """

  def loss_fn(head_params):
    variables = {
      'params': {**state.params, 'head': head_params},
      'batch_stats': state.batch_stats,
    }
    if hp.shift_bn:
      out, mutated = state.apply_fn(
        variables, batch['image'], train=True, mutable=['batch_stats']
      )
      stats = mutated['batch_stats']
    else:
      out = state.apply_fn(variables, batch['image'], train=False)
      stats = state.batch_stats
    if hp.loss == 'ce':
      loss = losses.cross_entropy(out['logits'], batch['label'])
    else:
      loss = losses.label_aware_smoothing(
        out['logits'],
        batch['label'],
        hp.class_counts,
        hp.las_head,
        hp.las_tail,
        hp.las_shape,
        hp.las_power,
      )
    acc = losses.top1(out['logits'], batch['label'])
    return loss, (stats, acc)

  (loss, (stats, acc)), head_grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params['head']
  )
  grads = {
    k: (head_grads if k == 'head' else jax.tree.map(jnp.zeros_like, v))
    for k, v in state.params.items()
  }
  state = state.apply_gradients(grads=grads, batch_stats=stats)
  return state, dict(
    loss=loss, accuracy=acc, params_finite=all_finite(state.params)
  )
