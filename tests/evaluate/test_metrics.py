import numpy as np

from lcreg_jax import evaluate
from lcreg_jax.evaluate import metrics


def test_calibration_hand_case():
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [1.0, 0.0]])
  labels = np.array([0, 1, 1, 0])
  # Bins (15, right-closed): 0.9 → bin 13 (acc 1/2), 0.6 = 9/15 → bin 8
  # (acc 1), 1.0 → bin 14 (acc 1).
  ece, mce = evaluate.calibration(probs, labels, 15)
  np.testing.assert_allclose(ece, 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.0)
  np.testing.assert_allclose(mce, 0.4)


def test_calibration_bins_are_right_closed():
  # Confidence exactly on an edge (1/3 = 5/15) belongs to the bin below it;
  # if it were pooled with 0.35 (bin 5) the gap would average away.
  probs = np.array([[1 / 3, 1 / 3, 1 / 3], [0.35, 0.33, 0.32]])
  labels = np.array([0, 1])
  ece, mce = evaluate.calibration(probs, labels, 15)
  np.testing.assert_allclose(ece, 0.5 * (1 - 1 / 3) + 0.5 * 0.35)
  np.testing.assert_allclose(mce, 1 - 1 / 3)


def test_metrics_groups_and_nll():
  counts = np.array([150, 50, 10])
  logits = np.log(
    np.array(
      [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]
    )
  )
  labels = np.array([0, 1, 2, 2])
  m = evaluate.compute_metrics(logits, labels, counts)
  assert m['top1'] == 0.75
  assert m['per_class_accuracy'] == [1.0, 1.0, 0.5]
  assert (m['many'], m['medium'], m['few']) == (1.0, 1.0, 0.5)
  np.testing.assert_allclose(
    m['nll'], -np.mean(np.log([0.7, 0.7, 0.1, 0.7])), rtol=1e-6
  )


def test_validation_scores_hand_case():
  # Class 0: 3 of 4 right; class 1: 0 of 1; class 2 absent (left out).
  labels = np.array([0, 0, 0, 0, 1])
  scores = np.eye(3)[[0, 0, 0, 2, 0]]
  got = metrics.validation_scores(scores, labels, 3)
  assert got == dict(top1=3 / 5, class_mean_top1=(3 / 4 + 0) / 2)
  assert set(metrics.SELECT_SCORES.values()) == set(got)
