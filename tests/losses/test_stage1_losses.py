"""Stage-1 baseline losses (docs/method.md §8) against float64 NumPy transcriptions,
hand-worked cases and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcreg_jax import losses

C = 5
# Class 3 has count 1; class 4 is absent from the batch below.
COUNTS = np.array([50, 20, 7, 1, 3])


def _data(b=12, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(b, C))
  labels = rng.choice([0, 1, 2, 3], size=b)  # class 4 never a label
  labels[0] = 3  # the count-1 class is
  return logits, labels


def _np_ce(z, y):
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y]


def _np_wmean(l, y, w):
  if w is None:
    return l.mean()
  return (w[y] * l).sum() / w[y].sum()


def _np_focal(z, y, gamma, w=None):
  l = _np_ce(z, y) * (1.0 if w is None else w[y])
  return ((1 - np.exp(-l)) ** gamma * l).mean()


def _np_ldam(z, y, counts, max_m, s, w=None):
  m = 1.0 / counts.astype(np.float64) ** 0.25
  m = m * max_m / m.max()
  z = z.copy()
  z[np.arange(len(y)), y] -= m[y]
  return _np_wmean(_np_ce(s * z, y), y, w)


def _np_la(z, y, counts, tau, w=None):
  prior = counts / counts.sum()
  return _np_wmean(_np_ce(z + tau * np.log(prior), y), y, w)


def _np_eff(counts, beta):
  w = (1 - beta) / (1 - beta ** counts.astype(np.float64))
  return w * len(counts) / w.sum()


W = _np_eff(COUNTS, 0.999)


def _close(a, b, tol=2e-5):
  np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize('weighted', [False, True])
def test_focal_matches_numpy(gamma, weighted):
  z, y = _data()
  w = W if weighted else None
  _close(
    losses.focal_loss(
      jnp.asarray(z, jnp.float32),
      jnp.asarray(y),
      gamma,
      None if w is None else jnp.asarray(w, jnp.float32),
    ),
    _np_focal(z, y, gamma, w),
  )


def test_focal_gamma_zero_is_cross_entropy_and_focusing_lowers_it():
  z, y = _data()
  z, y = jnp.asarray(z, jnp.float32), jnp.asarray(y)
  ce = losses.cross_entropy(z, y)
  _close(losses.focal_loss(z, y, 0.0), float(ce), 1e-6)
  assert float(losses.focal_loss(z, y, 2.0)) < float(ce)


@pytest.mark.parametrize('weighted', [False, True])
def test_ldam_matches_numpy(weighted):
  z, y = _data(seed=1)
  z = z / 10  # normalised-logit scale, as s = 30 expects
  w = W if weighted else None
  got = losses.ldam_loss(
    jnp.asarray(z, jnp.float32),
    jnp.asarray(y),
    COUNTS,
    0.5,
    30.0,
    None if w is None else jnp.asarray(w, jnp.float32),
  )
  _close(got, _np_ldam(z, y, COUNTS, 0.5, 30.0, w), 1e-4)


def test_ldam_margins_hand_worked():
  # n = (1, 16, 81): n^{-1/4} = (1, 1/2, 1/3), already max 1 -> x 0.5.
  np.testing.assert_allclose(
    losses.ldam_margins([1, 16, 81], 0.5), [0.5, 0.25, 0.5 / 3], rtol=1e-6
  )
  # Only the true logit moves: with s = 1 and a 2-class batch, by hand.
  z = jnp.array([[1.0, 0.0]])
  got = losses.ldam_loss(z, jnp.array([1]), [16, 1], max_margin=0.5, scale=1.0)
  # class 1 (n = 1) gets the largest margin 0.5: CE([1, -0.5], 1).
  _close(got, np.log(1 + np.exp(1.5)), 1e-6)


@pytest.mark.parametrize('tau', [0.0, 1.0, 1.7])
@pytest.mark.parametrize('weighted', [False, True])
def test_logit_adjusted_matches_numpy(tau, weighted):
  z, y = _data(seed=2)
  w = W if weighted else None
  got = losses.logit_adjusted_loss(
    jnp.asarray(z, jnp.float32),
    jnp.asarray(y),
    COUNTS,
    tau,
    None if w is None else jnp.asarray(w, jnp.float32),
  )
  _close(got, _np_la(z, y, COUNTS, tau, w))
  if tau == 0.0 and not weighted:
    _close(got, _np_ce(z, y).mean())


@pytest.mark.parametrize('weighted', [False, True])
def test_balanced_softmax_matches_numpy(weighted):
  z, y = _data(seed=3)
  w = W if weighted else None
  got = losses.balanced_softmax_loss(
    jnp.asarray(z, jnp.float32),
    jnp.asarray(y),
    COUNTS,
    class_weights=None if w is None else jnp.asarray(w, jnp.float32),
  )
  _close(got, _np_wmean(_np_ce(z + np.log(COUNTS), y), y, w))
  # Balanced softmax is the logit-adjusted loss at τ = 1 (log N cancels).
  _close(got, _np_la(z, y, COUNTS, 1.0, w))


def test_effective_number_weights_hand_worked():
  # β = 0.5, n = (1, 2): raw (0.5/0.5, 0.5/0.75) = (1, 2/3) -> x 2/(5/3).
  np.testing.assert_allclose(
    losses.effective_number_weights([1, 2], 0.5), [1.2, 0.8], rtol=1e-6
  )
  np.testing.assert_allclose(
    losses.effective_number_weights(COUNTS, 0.9999),
    _np_eff(COUNTS, 0.9999),
    rtol=1e-5,
  )
  # β = 0: every weight 1 (LDAM-DRW's "before the deferral").
  np.testing.assert_allclose(
    losses.effective_number_weights(COUNTS, 0.0), np.ones(C), rtol=1e-6
  )
  w = losses.effective_number_weights(COUNTS, 0.9999)
  assert abs(w.sum() - C) < 1e-4 and np.all(np.diff(w[:3]) > 0)


def test_drw_weights_switch_exactly_at_the_step():
  w = np.array([0.5, 1.5, 3.0])
  for step, expect in ((9, np.ones(3)), (10, w), (11, w)):
    np.testing.assert_array_equal(
      np.asarray(losses.drw_weights(jnp.asarray(step), 10, w)), expect
    )


def test_class_weighted_mean_is_pytorch_convention():
  l = jnp.array([1.0, 2.0, 4.0])
  y = jnp.array([0, 1, 1])
  w = jnp.array([3.0, 1.0])
  _close(losses.class_weighted_mean(l, y, w), (3 + 2 + 4) / 5, 1e-7)
  _close(losses.class_weighted_mean(l, y), 7 / 3, 1e-7)


def test_mixup_loss_mixes_the_two_label_losses():
  z, y = _data(seed=4)
  z, y = jnp.asarray(z, jnp.float32), jnp.asarray(y)
  yp = y[::-1]
  fn = lambda a, b: losses.focal_loss(a, b, 2.0)
  _close(
    losses.mixup_loss(fn, z, y, yp, 0.3),
    0.3 * float(fn(z, y)) + 0.7 * float(fn(z, yp)),
  )
  _close(
    losses.mixup_loss(losses.cross_entropy, z, y, yp, 0.3),
    float(losses.mixup_cross_entropy(z, y, yp, 0.3)),
    1e-7,
  )


LOSSES = {
  'focal': lambda z, y, w: losses.focal_loss(z, y, 2.0, w),
  'ldam': lambda z, y, w: losses.ldam_loss(z, y, COUNTS, 0.5, 3.0, w),
  'balanced_softmax': lambda z, y, w: losses.balanced_softmax_loss(
    z, y, COUNTS, class_weights=w
  ),
  'logit_adjusted': lambda z, y, w: losses.logit_adjusted_loss(
    z, y, COUNTS, 0.7, w
  ),
}


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_gradients_match_finite_differences(name):
  z, y = _data(b=6, seed=5)
  fn = LOSSES[name]
  with jax.enable_x64(True):
    zj, yj, wj = jnp.asarray(z), jnp.asarray(y), jnp.asarray(W)
    f = jax.jit(lambda a: fn(a, yj, wj))
    grad = np.asarray(jax.grad(f)(zj))
    assert grad.dtype == np.float64
    eps, fd = 1e-6, np.zeros_like(z)
    for idx in np.ndindex(z.shape):
      d = np.zeros_like(z)
      d[idx] = eps
      fd[idx] = (float(f(zj + d)) - float(f(zj - d))) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
