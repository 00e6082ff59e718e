"""Likelihood routing and cluster priors, against hand-worked cases."""

import numpy as np
import pytest

from lcreg_jax.dlsa import routing


@pytest.mark.parametrize(
  'n,fraction,expected',
  [
    (10, 0.3, 3),
    (11, 0.3, 4),
    (100, 0.3, 30),
    (7, 0.5, 4),
    (2, 0.9, 1),
    (1, 0.3, 0),
    (0, 0.3, 0),
    (5, 0.999, 4),
  ],
)
def test_num_routed_rule(n, fraction, expected):
  # min(ceil(f n), n - 1), at least 0.
  assert routing.num_routed(n, fraction) == expected


def test_routing_stages_are_exact_disjoint_and_cover():
  rng = np.random.default_rng(0)
  n, depth, fraction = 1003, 3, 0.3
  logp = rng.normal(size=n).astype(np.float32)
  logp[:40] = logp[40]  # Ties must not change the count.
  val_logp = rng.normal(size=301).astype(np.float32)
  remaining = np.ones(n, bool)
  val_remaining = np.ones(val_logp.size, bool)
  stage = np.full(n, depth)
  val_stage = np.full(val_logp.size, depth)
  expected_left = n
  for s in range(depth):
    routed, thr = routing.route_stage(logp, remaining, fraction)
    k = int(np.ceil(fraction * expected_left))
    assert routed.sum() == k
    assert not (routed & ~remaining).any()  # Only from what is left.
    # The top of the remaining ones, threshold = lowest routed value.
    assert logp[routed].min() == thr
    assert logp[remaining & ~routed].max() <= thr
    val_routed = routing.route_by_threshold(val_logp, val_remaining, thr)
    np.testing.assert_array_equal(val_routed, val_remaining & (val_logp >= thr))
    stage[routed], val_stage[val_routed] = s, s
    remaining &= ~routed
    val_remaining &= ~val_routed
    expected_left -= k
  assert remaining.sum() == expected_left > 0
  # Each sample is in exactly one route (stages < depth, or the final one).
  for st, rem in ((stage, remaining), (val_stage, val_remaining)):
    np.testing.assert_array_equal(st == depth, rem)
    assert sum((st == s).sum() for s in range(depth + 1)) == st.size


def test_cluster_prior_matrix_by_hand():
  clusters = np.array([0, 0, 0, 2, 2, 3])
  labels = np.array([1, 1, 0, 2, 2, 0])
  prior = routing.cluster_prior_matrix(clusters, labels, 5, 3)
  expected = np.array(
    [[1 / 3, 2 / 3, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
  )
  np.testing.assert_allclose(prior, expected, rtol=1e-6)
