"""The numbers behind the notebook's figures, against plain loops, and the
Figure-4 panel showing each image's strongest latent categories."""

import matplotlib
import numpy as np

from lcreg_jax.evaluate import figures

matplotlib.use('Agg')


def _maps(n=6, h=3, w=2, m=5, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, h, w, m)) * 2
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)


def test_latent_weights_and_class_usage_match_loops():
  a = _maps()
  labels = np.array([0, 2, 2, 0, 2, 0])
  w = figures.latent_weights(a)
  for i in range(6):
    for k in range(5):
      assert np.isclose(
        w[i, k], sum(a[i, y, x, k] for y in range(3) for x in range(2)) / 6
      )
  np.testing.assert_allclose(w.sum(1), 1.0)
  usage = figures.latent_usage_by_class(a, labels, 3)
  np.testing.assert_allclose(usage[0], (w[0] + w[3] + w[5]) / 3)
  np.testing.assert_allclose(usage[2], (w[1] + w[2] + w[4]) / 3)
  assert np.isnan(usage[1]).all()  # class 1 has no image


def test_per_class_accuracy():
  probs = np.eye(3)[[0, 1, 1, 2, 0]]
  labels = np.array([0, 1, 2, 2, 1])
  np.testing.assert_allclose(
    figures.per_class_accuracy(probs, labels, 4), [1.0, 0.5, 0.5, np.nan]
  )


def test_latent_maps_figure_shows_each_images_strongest_latents():
  a = _maps(n=2, m=6, seed=1)
  images = np.random.default_rng(2).normal(size=(2, 6, 4, 1))
  fig = figures.latent_maps_figure(images, [3, 1], a, top_k=2)
  axes = np.array(fig.axes).reshape(2, 4)
  w = figures.latent_weights(a)
  for i in range(2):
    want = np.argsort(-w[i])[:2]
    got = [int(ax.get_title().split(':')[0].split()[1]) for ax in axes[i, 1:3]]
    assert got == list(want)
    assert axes[i, 0].get_title() == f'class {[3, 1][i]}'
    heights = [p.get_height() for p in axes[i, 3].patches]
    np.testing.assert_allclose(heights, w[i])


def test_routing_figure_bars_are_shares_and_accuracies():
  routing = {
    '1': dict(share=0.25, accuracy=None),
    '0': dict(share=0.75, accuracy=0.8),
  }
  fig = figures.routing_figure(routing)
  share, acc = fig.axes
  assert [t.get_text() for t in share.get_xticklabels()] == ['stage 0', 'final']
  np.testing.assert_allclose([p.get_height() for p in share.patches], [75, 25])
  heights = [p.get_height() for p in acc.patches]
  assert heights[0] == 80 and np.isnan(heights[1])
