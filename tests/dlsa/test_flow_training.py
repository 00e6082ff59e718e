"""Flow training: pair sampling, class weights, purity metrics, the loss
against NumPy, and train_flow through the loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from lcreg_jax.config.dlsa import dlsa_config, with_preset
from lcreg_jax.dlsa import flow as flow_lib
from lcreg_jax.dlsa import flow_training as train_lib


def test_class_nll_weights_by_hand():
  labels = np.array([0, 0, 0, 0, 1, 1, 2])  # n = 4, 2, 1; n_max = 4.
  # Authors: raw (4/n)^2 = 1, 4, 16 over their sum 21 (mean 1/C).
  np.testing.assert_allclose(
    train_lib.class_nll_weights(labels, 3), [1 / 21, 4 / 21, 16 / 21], rtol=1e-6
  )
  # 'samples': Σ n_c w_c = 4 + 8 + 16 = 28 -> scale 7 / 28.
  np.testing.assert_allclose(
    train_lib.class_nll_weights(labels, 3, norm='samples'),
    [0.25, 1.0, 4.0],
    rtol=1e-6,
  )
  # Absent class -> 0; power 1: raw 1, 2, (absent), 4 -> Σ n w = 4+4+4 = 12.
  np.testing.assert_allclose(
    train_lib.class_nll_weights(
      np.array([0, 0, 0, 0, 1, 1, 3]), 4, 1.0, 'samples'
    ),
    [7 / 12, 14 / 12, 0.0, 28 / 12],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    train_lib.class_nll_weights(np.array([0, 0, 0, 0, 1, 1, 3]), 4, 1.0),
    [1 / 7, 2 / 7, 0.0, 4 / 7],
    rtol=1e-6,
  )


def test_class_uniform_pairs_chi_square():
  """Both classes of a pair uniform over the present classes, never equal,
  and the sample uniform within its class."""
  counts = np.array([50, 0, 9, 3, 1])  # Class 1 absent.
  labels = np.repeat(np.arange(5), counts)
  starts = np.cumsum(counts) - counts
  classes = np.array([0, 2, 3, 4, 0], np.int32)  # Present ones, padded.
  n_draw = 20000
  pos, neg = jax.jit(train_lib.sample_class_pairs, static_argnums=5)(
    jax.random.PRNGKey(0),
    jnp.asarray(classes),
    jnp.asarray(4),
    jnp.asarray(starts),
    jnp.asarray(counts),
    n_draw,
  )
  pos, neg = np.asarray(pos), np.asarray(neg)
  assert pos.max() < labels.size and neg.max() < labels.size
  yp, yn = labels[pos], labels[neg]
  assert np.all(yp != yn)
  for y in (yp, yn):
    freq = np.bincount(y, minlength=5)
    assert freq[1] == 0
    assert stats.chisquare(freq[[0, 2, 3, 4]]).pvalue > 1e-3
  # The positive's sample uniform within class 0 (50 samples).
  within = np.bincount(pos[yp == 0], minlength=50)
  assert stats.chisquare(within).pvalue > 1e-3
  # The negative's class uniform over the 3 others given the positive's.
  for c in (0, 2, 3, 4):
    freq = np.bincount(yn[yp == c], minlength=5)[[0, 2, 3, 4]]
    assert freq[[0, 2, 3, 4].index(c)] == 0
    assert stats.chisquare(freq[freq > 0]).pvalue > 1e-3
  # The χ² test does fail on a skewed draw (the check has power).
  skew = np.bincount(
    labels[np.random.default_rng(0).integers(0, labels.size, n_draw)],
    minlength=5,
  )[[0, 2, 3, 4]]
  assert stats.chisquare(skew).pvalue < 1e-10


def test_authors_selection_score_by_hand():
  # K = 4 clusters over 24 samples: cluster 0 pure (12), cluster 1 8/10
  # pure, cluster 2 pure but 2 samples, cluster 3 empty.
  clusters = np.repeat([0, 1, 2], [12, 10, 2])
  labels = np.r_[np.zeros(12), np.ones(8), 2, 2, 0, 0].astype(int)
  # Purity > 0.7 and size > 1: clusters 0, 1, 2 -> 3; size > 10: only 0.
  assert train_lib.authors_selection_score(clusters, labels, 4, 3, 0.7, 1) == 3
  assert train_lib.authors_selection_score(clusters, labels, 4, 3, 0.7, 10) == 1
  assert (
    train_lib.authors_selection_score(clusters, labels, 4, 3, 0.8, 1) == 2
  )  # 0.8 is not > 0.8.
  # The authors' fixed cap: the largest cluster (12) must stay below it.
  score = lambda **kw: train_lib.authors_selection_score(
    clusters, labels, 4, 3, 0.7, 1, **kw
  )
  assert score(cap=13) == 3 and score(cap=12) is None
  assert score() == 3  # the default 5000
  # The factor rule (cap None), N / K * f = 6 f: 12 passes at f = 2, not 1.9.
  assert score(cap=None, cap_factor=2.0) == 3
  assert score(cap=None, cap_factor=1.9) is None
  # The two rules part: 5000 takes a 120-sample cluster of N = 240, K = 4,
  # which N / K * 1.9 = 114 rejects.
  big = np.repeat([0, 1], [120, 120])
  assert train_lib.authors_selection_score(big, big % 3, 4, 3, 0.7, 1) == 2
  assert (
    train_lib.authors_selection_score(
      big, big % 3, 4, 3, 0.7, 1, cap=None, cap_factor=1.9
    )
    is None
  )


def test_sample_pairs_distribution():
  counts = np.array([5, 3, 2])
  labels = np.repeat(np.arange(3), counts)
  padded = np.concatenate([labels, np.full(6, 2)])  # Padding never drawn.
  starts = np.cumsum(counts) - counts
  pos, neg = jax.jit(train_lib.sample_pairs, static_argnums=5)(
    jax.random.PRNGKey(0),
    jnp.asarray(padded),
    10,
    jnp.asarray(starts),
    jnp.asarray(counts),
    40000,
  )
  pos, neg = np.asarray(pos), np.asarray(neg)
  assert pos.max() < 10 and neg.max() < 10
  assert np.all(labels[pos] != labels[neg])
  # Positives uniform over samples.
  np.testing.assert_allclose(
    np.bincount(pos, minlength=10) / pos.size, 0.1, atol=0.01
  )
  # Negatives uniform over the samples of the other classes.
  for c in range(3):
    others = np.flatnonzero(labels != c)
    freq = np.bincount(neg[labels[pos] == c], minlength=10)[others]
    np.testing.assert_allclose(freq / freq.sum(), 1 / others.size, atol=0.02)


def test_purity_metrics_by_hand():
  clusters = np.array([0, 0, 0, 1, 1, 2])
  labels = np.array([0, 0, 1, 1, 2, 2])
  # Cluster majorities: 2 of 3, 1 of 2, 1 of 1 -> 4 / 6.
  assert train_lib.cluster_purity(clusters, labels, 4, 3) == pytest.approx(
    4 / 6
  )
  # Training majorities: cluster 0 -> 0, cluster 1 -> 1 (tie -> lowest),
  # cluster 2 -> 2, cluster 3 empty (always wrong).
  val_c = np.array([0, 0, 1, 2, 3])
  val_y = np.array([0, 1, 1, 1, 0])
  assert train_lib.heldout_purity(
    clusters, labels, val_c, val_y, 4, 3
  ) == pytest.approx(2 / 5)


def _loss_setup(purity_type='hinge_ce', center_std=0.05, seed=0, **kw):
  cfg = with_preset(dlsa_config())
  cfg.num_clusters, cfg.purity_type, cfg.center_std = 6, purity_type, center_std
  cfg.purity_margin, cfg.purity_weight, cfg.balance_weight = 1.5, 0.7, 0.3
  cfg.nll_per_dim, cfg.flow_separate_passes = True, False  # Today's form.
  cfg.update(kw)
  dim, b = 3, 8
  model = flow_lib.MAF(dim)
  rng = np.random.default_rng(seed)
  xp = jnp.asarray(rng.normal(size=(b, dim)), jnp.float32)
  xn = jnp.asarray(rng.normal(size=(b, dim)) + 1, jnp.float32)
  v = train_lib._flow_init_fn(model)(jax.random.PRNGKey(seed), xp)  # Jitted.
  centers = flow_lib.make_centers(jax.random.PRNGKey(1), 6, dim, center_std)
  wp = jnp.asarray(rng.uniform(0.5, 2, b), jnp.float32)
  valid = jnp.asarray(np.r_[np.ones(b - 1), 0.0], jnp.float32)
  hp = train_lib.FlowHParams.from_config(cfg, dim)
  return cfg, model, v, centers, (xp, xn, wp, valid), hp


@pytest.mark.parametrize('authors', [False, True])
def test_flow_loss_matches_numpy(authors):
  """Today's form (hinge, per-dim NLL, one pass) and the authors' (neg_ce,
  full-D NLL times λ_lh = 2, two BatchNorm passes)."""
  kw = (
    dict(
      purity_type='neg_ce',
      nll_per_dim=False,
      nll_weight=2.0,
      flow_separate_passes=True,
    )
    if authors
    else {}
  )
  cfg, model, v, centers, (xp, xn, wp, valid), hp = _loss_setup(**kw)
  loss_fn = jax.jit(train_lib.flow_loss_fn(model, hp))
  ema0 = jnp.zeros(6)
  total, (_, ema, m) = loss_fn(
    v['params'], v['batch_stats'], centers, xp, xn, wp, valid, ema0, 1.0
  )
  fwd = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0]
  )
  if authors:  # Each half normalised with its own batch statistics.
    (zp, lp), (zn, ln) = fwd(v, xp), fwd(v, xn)
    z, logdet = np.concatenate([zp, zn]), np.concatenate([lp, ln])
  else:
    z, logdet = fwd(v, jnp.concatenate([xp, xn]))
  z, logdet = np.asarray(z, np.float64), np.asarray(logdet, np.float64)
  c = np.asarray(centers, np.float64)
  ell = -0.5 * ((z[:, None] - c[None]) ** 2).sum(-1) - 1.5 * math.log(
    2 * math.pi
  )
  logp = special.logsumexp(ell, 1) - math.log(6) + logdet
  b = 8
  nll = -np.mean(np.asarray(wp) * logp[:b])
  nll = nll * 2.0 if authors else nll / 3  # λ_lh, or nats per dimension.
  logq = ell - special.logsumexp(ell, 1, keepdims=True)
  p = np.exp(logq)
  ce = -(p[:b] * logq[b:]).sum(1)
  per_pair = -ce if authors else np.maximum(math.log(6) + 1.5 - ce, 0)
  purity = (per_pair * np.asarray(valid)).sum() / np.asarray(valid).sum()
  pbar = p[:b].mean(0)  # ema_hat at t = 1 after bias correction.
  balance = np.sum(pbar * np.log(pbar)) + math.log(6)
  np.testing.assert_allclose(m['nll'], nll, rtol=1e-4)
  np.testing.assert_allclose(m['purity'], purity, rtol=1e-4)
  np.testing.assert_allclose(m['balance'], balance, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(
    total, nll + 0.7 * purity + 0.3 * balance, rtol=1e-4
  )
  np.testing.assert_allclose(ema, (1 - cfg.ema_decay) * pbar, rtol=1e-4)


@pytest.mark.parametrize('purity_type', ['neg_ce', 'hinge_ce', 'overlap'])
def test_purity_term_separates_pairs(purity_type):
  """Descending the purity term alone lowers P(same cluster) of pairs."""
  _, model, v, centers, (xp, xn, wp, valid), hp = _loss_setup(
    purity_type, center_std=1.0, seed=3
  )
  loss_fn = train_lib.flow_loss_fn(model, hp)

  def purity(params):
    return loss_fn(
      params, v['batch_stats'], centers, xp, xn, wp, valid, jnp.zeros(6), 1.0
    )[1][2]['purity']

  def overlap(params):
    (z, _), _ = model.apply(
      {'params': params, 'batch_stats': v['batch_stats']},
      jnp.concatenate([xp, xn]),
      train=True,
      mutable=['batch_stats'],
    )
    q = jax.nn.softmax(flow_lib.component_log_likelihoods(z, centers), -1)
    return jnp.sum(q[:8] * q[8:], -1)[:-1].mean()  # Last pair is invalid.

  @jax.jit
  def step(params):
    g = jax.grad(purity)(params)
    # neg_ce is linear in log p_neg and unbounded below: large steps blow
    # the flow up (the authors weight it by 0.02), so it gets a small lr.
    lr = 0.02 if purity_type == 'neg_ce' else 0.3
    return jax.tree.map(lambda p, d: p - lr * d, params, g)

  params = v['params']
  overlap = jax.jit(overlap)
  before = float(overlap(params))
  for _ in range(30):
    params = step(params)
  assert float(overlap(params)) < 0.8 * before


def test_neg_ce_gradient_moves_the_negative_away():
  """A descent step on the negative's logits lowers Σ_k p_pos,k p_neg,k,
  and the gradient is p_pos - p_neg Σ p_pos (finite differences agree)."""
  rng = np.random.default_rng(0)
  p_pos = jax.nn.softmax(jnp.asarray(rng.normal(size=(5, 7)) * 2))
  logits = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  f = lambda l: jnp.mean(train_lib.neg_ce_purity(p_pos, jax.nn.log_softmax(l)))
  overlap = lambda l: jnp.sum(p_pos * jax.nn.softmax(l), -1)
  g = jax.grad(f)(logits)
  p_neg = np.asarray(jax.nn.softmax(logits), np.float64)
  pp = np.asarray(p_pos, np.float64)
  np.testing.assert_allclose(
    g, (pp - p_neg * pp.sum(1, keepdims=True)) / 5, atol=1e-6
  )
  after = overlap(logits - 0.5 * g)
  assert np.all(np.asarray(after) < np.asarray(overlap(logits)))


def test_balance_term_matches_numpy_with_bias_corrected_ema():
  rng = np.random.default_rng(1)
  k, decay = 5, 0.7
  means = [rng.dirichlet(np.ones(k)) for _ in range(3)]
  ema = jnp.zeros(k)
  ema_np = np.zeros(k)
  for t, m in enumerate(means, start=1):
    kl, ema_new = train_lib.balance_term(jnp.asarray(m), ema, float(t), decay)
    ema_np = decay * ema_np + (1 - decay) * m
    hat = ema_np / (1 - decay**t)
    np.testing.assert_allclose(
      kl, np.sum(hat * np.log(hat)) + np.log(k), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(ema_new, ema_np, rtol=1e-6)
    # The gradient flows through this batch's share only.
    g_mean, g_ema = jax.grad(
      lambda m_, e_: train_lib.balance_term(m_, e_, float(t), decay)[0],
      argnums=(0, 1),
    )(jnp.asarray(m), ema)
    np.testing.assert_allclose(
      g_mean, (1 - decay) / (1 - decay**t) * (np.log(hat) + 1), rtol=1e-4
    )
    np.testing.assert_array_equal(g_ema, 0.0)
    ema = ema_new


def _small_flow(tmp_path, counts, data_seed, **changes):
  """train_flow on three separated Gaussian classes of `counts` samples and
  no validation split: (info, logged lines)."""
  rng = np.random.default_rng(data_seed)
  y = np.repeat(np.arange(3), counts)
  x = rng.normal(size=(3, 4))[y] * 3 + rng.normal(size=(y.size, 4))
  x = x.astype(np.float32)
  cfg = with_preset(dlsa_config())
  cfg.update(num_clusters=8, flow_batch_size=32, **changes)
  logs = []
  _, _, _, info = train_lib.train_flow(
    x,
    y,
    x[:0],
    y[:0],
    num_classes=3,
    config=cfg,
    seed=0,
    workdir=str(tmp_path),
    log=logs.append,
  )
  return info, logs


@pytest.mark.parametrize('cap,expected_step', [(1e-3, 20), (1e3, None)])
def test_authors_selection_in_train_flow(tmp_path, cap, expected_step):
  """Over the cap everywhere: the last flow is kept (the authors' fallback),
  never the untrained one; otherwise the step with the highest count."""
  info, logs = _small_flow(
    tmp_path,
    [60, 30, 10],
    0,
    flow_steps=20,
    flow_eval_every=10,
    select_cap=None,
    select_cap_factor=cap,
    select_min_size=2,
  )
  if expected_step is not None:
    assert info == {
      'val_score': None,
      'over_cap': True,
      'step': expected_step,
      'n_train': 100,
    }
    assert any('every flow over the cap' in l for l in logs)
  else:
    assert info['step'] in (10, 20) and info['val_score'] >= 0
    assert any(f'train_authors={info["val_score"]:.4f}' in l for l in logs)


def test_without_a_scorer_the_last_flow_is_kept_and_none_is_over_a_cap(
  tmp_path,
):
  """A validation metric with no validation split: no flow can be scored,
  so the last one is kept, and the report must not call that 'over the
  cap' (no cap was applied)."""
  info, logs = _small_flow(
    tmp_path,
    [40, 20, 10],
    1,
    flow_steps=12,
    flow_eval_every=4,
    flow_select_metric='purity',
  )
  assert info['over_cap'] is False and info['step'] == 12
  assert not any('over the cap' in l for l in logs)


def test_flow_checks_once_per_epoch_by_default():
  cfg = dlsa_config()
  cfg.flow_batch_size = 32
  assert train_lib.flow_check_every(cfg, 100) == 4  # ceil(100 / 32)
  assert train_lib.flow_check_every(cfg, 64) == 2
  cfg.flow_eval_every = 250
  assert train_lib.flow_check_every(cfg, 100) == 250
