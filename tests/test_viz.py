"""viz.py: panels have the expected layout, captions, colours, and draw what they claim."""

from pathlib import Path

import numpy as np
from spectral_jax import viz

STATIC = Path(viz.__file__).parent / 'static' / 'index.html'


def js_diverging(t: float) -> tuple[int, int, int]:
  """The web page's colour for t = v / max|v|, transcribed from its script by hand."""
  a = int(np.floor(255 * (1 - abs(t)) + 0.5))  # Math.round
  return (255 if t > 0 else a, a, 255 if t < 0 else a)


def test_heatmap_is_the_web_pages_diverging_map():
  # The page still draws with the formula transcribed above.
  script = STATIC.read_text()
  assert 'const a = Math.round(255 * (1 - Math.abs(t)));' in script
  assert (
    'img.data[o] = t > 0 ? 255 : a; img.data[o + 1] = a; img.data[o + 2] = t < 0 ? 255 : a;'
    in (script)
  )
  values = np.array([[-2.0, -1.0, -0.3, 0.0, 0.25, 1.0, 1.5]])
  out = viz.heatmap(values)
  expected = [js_diverging(v / 2.0) for v in values[0]]
  assert [tuple(int(c) for c in px) for px in out[0]] == expected
  assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 3]) == (255, 255, 255)
  assert (viz.heatmap(np.zeros((2, 2))) == 255).all()  # constant zero: white, not NaN


def test_box_outline_is_inside_the_box():
  image = np.zeros((20, 30, 3), np.uint8)
  out = viz.draw_box(image, [5, 4, 15, 12], width=1)
  red = (out == [255, 0, 0]).all(-1)
  ys, xs = np.nonzero(red)
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (4, 11, 5, 14)
  assert not red[6:10, 7:13].any()  # hollow


def strip_height(h: int) -> int:
  return int(np.clip(round(0.08 * h), 14, 28))


def test_panel_layout_and_captions():
  image = np.zeros((32, 48, 3), np.uint8)
  vecs = np.random.default_rng(0).normal(size=(5, 6))
  panel = viz.panel(
    image,
    vecs,
    (2, 3),
    box_xyxy=[0, 0, 16, 16],
    num_eigenvectors=2,
    eigenvalues=[0.0, 0.0123, 0.5],
    score=0.75,
    title='dsm · dino_vits16',
  )
  strip = strip_height(32)
  # image | 2 heat maps | overlay, with 4-pixel gaps, under a caption strip
  assert panel.shape == (strip + 32, 4 * 48 + 3 * 4, 3)
  assert (panel[:strip, :48] != 240).any() and (panel[:strip, :48] <= 240).all()  # text drawn
  # The heat map tiles are the diverging map of the vectors, nearest-upsampled.
  np.testing.assert_array_equal(panel[strip, 52], viz.heatmap(vecs[1].reshape(2, 3))[0, 0])
  mask = np.zeros((32, 48), bool)
  mask[:8] = True
  overlay = viz.panel(image, None, (2, 3), mask=mask)
  assert overlay.shape == (strip + 32, 2 * 48 + 4, 3)
  assert overlay[strip, 52:, 0].max() > 0 and overlay[strip + 20, 52:].max() == 0


def test_caption_text_differs_and_fits():
  tile = np.zeros((100, 60, 3), np.uint8)
  a, b = viz.caption(tile, 'eigenvector 1'), viz.caption(tile, 'eigenvector 2, eigenvalue 0.5')
  strip = strip_height(100)
  assert a.shape == (strip + 100, 60, 3) and (a[strip:] == 0).all()
  assert not np.array_equal(a[:strip], b[:strip])
  # A long caption is shrunk, never cut: its last glyph column stays inside the tile.
  long = viz.caption(tile, 'a very long caption that would not fit at its first size')
  dark = np.nonzero((long[:strip] < 200).any(axis=(0, 2)))[0]
  assert dark.max() < 60 - 1


def test_huge_images_give_bounded_panels():
  image = np.zeros((3000, 4000, 3), np.uint8)
  panel = viz.panel(image, None, (2, 3), box_xyxy=[2000, 1500, 4000, 3000])
  assert panel.shape[0] == viz.MAX_TILE_HEIGHT + strip_height(viz.MAX_TILE_HEIGHT)
  # The box is drawn scaled: its top-left corner at (2000, 1500) × 384 / 3000 = (256, 192).
  strip = strip_height(viz.MAX_TILE_HEIGHT)
  right = panel[strip:, 512 + 4 :]
  ys, xs = np.nonzero((right == [255, 0, 0]).all(-1))
  assert (xs.min(), ys.min()) == (256, 192)


def test_voc_palette_and_label_panel():
  palette = viz.label_palette()
  np.testing.assert_array_equal(palette[:4], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]])
  assert len({tuple(c) for c in palette[:21]}) == 21
  image = np.zeros((16, 16, 3), np.uint8)
  panel = viz.label_panel(image, [np.array([[0, 1], [2, 3]])], ['segments'])
  strip = strip_height(16)
  assert panel.shape == (strip + 16, 36, 3)
  np.testing.assert_array_equal(panel[strip, 28], [128, 0, 0])  # label 1, top right
  # A title (method · model) lengthens the image's caption: more of its strip is inked.
  image = np.zeros((100, 200, 3), np.uint8)
  plain = viz.label_panel(image, [np.zeros((2, 2), np.uint8)])[: strip_height(100), :200]
  titled = viz.label_panel(image, [np.zeros((2, 2), np.uint8)], title='dsm · dino_vits16')
  titled = titled[: strip_height(100), :200]
  inked = [np.nonzero((p < 200).any(axis=(0, 2)))[0].max() for p in (plain, titled)]
  assert inked[1] > inked[0] + 50


def test_instances_panel_colours_boxes_and_scores():
  image = np.full((120, 160, 3), 100, np.uint8)
  labels = np.zeros((120, 160), np.uint8)
  labels[10:50, 20:80] = 1
  labels[70:110, 90:150] = 2
  boxes = [[20, 10, 80, 50], [90, 70, 150, 110]]
  panel = viz.instances_panel(image, labels, boxes, [0.9, 0.4], 'maskcut · dino_vits16')
  strip = strip_height(120)
  right = panel[strip:, 164:]
  palette = viz.label_palette()
  # Inside object 2, away from its box outline and score label: the image blended with colour 2.
  expected = np.round(0.45 * 100 + 0.55 * palette[2].astype(float)).astype(np.uint8)
  np.testing.assert_array_equal(right[100, 130], expected)
  # Its box outline is drawn in its colour; background pixels are untouched.
  np.testing.assert_array_equal(right[109, 120], palette[2])
  np.testing.assert_array_equal(right[60, 5], [100, 100, 100])
  # The score label sits at the box's corner, on the object's colour.
  corner = right[12:20, 23:40]
  assert (corner > 200).all(-1).any()  # white (anti-aliased) text
  assert (panel[:strip, 164:] < 240).any()  # the right tile's caption is drawn
