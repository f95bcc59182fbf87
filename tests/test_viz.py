"""viz.py: panels have the expected layout and draw what they claim."""

import numpy as np

from spectral_jax import viz


def test_heatmap_endpoints_and_constant_input():
  out = viz.heatmap(np.array([[0.0, 1.0]]))
  np.testing.assert_array_equal(out[0, 0], [68, 1, 84])  # viridis start
  np.testing.assert_array_equal(out[0, 1], [253, 231, 37])  # viridis end
  flat = viz.heatmap(np.zeros((2, 2)))
  assert (flat == flat[0, 0]).all()


def test_box_outline_is_inside_the_box():
  image = np.zeros((20, 30, 3), np.uint8)
  out = viz.draw_box(image, [5, 4, 15, 12], width=1)
  red = (out == [255, 0, 0]).all(-1)
  ys, xs = np.nonzero(red)
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (4, 11, 5, 14)
  assert not red[6:10, 7:13].any()  # hollow


def test_panel_layout():
  image = np.zeros((32, 48, 3), np.uint8)
  vecs = np.random.default_rng(0).normal(size=(5, 6))
  panel = viz.panel(image, vecs, (2, 3), box_xyxy=[0, 0, 16, 16], num_eigenvectors=2)
  # image | 2 heat maps | overlay, with 4-pixel gaps
  assert panel.shape == (32, 4 * 48 + 3 * 4, 3)
  mask = np.zeros((32, 48), bool)
  mask[:8] = True
  overlay = viz.panel(image, None, (2, 3), mask=mask)
  assert overlay.shape == (32, 2 * 48 + 4, 3)
  assert overlay[0, 52:, 0].max() > 0 and overlay[20, 52:].max() == 0


def test_voc_palette_and_label_panel():
  palette = viz.label_palette()
  np.testing.assert_array_equal(palette[:4], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]])
  assert len({tuple(c) for c in palette[:21]}) == 21
  image = np.zeros((16, 16, 3), np.uint8)
  panel = viz.label_panel(image, [np.array([[0, 1], [2, 3]])])
  assert panel.shape == (16, 36, 3)
  np.testing.assert_array_equal(panel[0, 28], [128, 0, 0])  # label 1, top right
