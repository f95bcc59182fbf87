"""Background removal: trimap, closed-form matte, foreground colours, cutout / composite.

The matte is checked on generated photographs with a known alpha: a textured, soft-edged
blob composited onto a textured background, with a blocky patch-level mask derived from the
true alpha the way the Fiedler mask is (patch majority vote, ×P block replication) and with
patches flipped at the border (eigenvector masks are never patch-perfect).
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from spectral_jax.imaging import matting
from spectral_jax.data import decode
from spectral_jax.results import cutout
from spectral_jax.tasks import edit as task
from tests.conftest import PARITY

# ----------------------------------------------------------------------------- generated scenes


def _noise(rng, hw, sigma):
  n = ndimage.gaussian_filter(rng.standard_normal(hw), sigma)
  return n / n.std()


def scene(h: int, w: int, seed: int = 0, soft: float = 4.0, noise: float = 0.02):
  """(image uint8 [H, W, 3], true alpha, true foreground, background) of a blob on a texture.

  Background: green/teal smooth noise + checks; foreground: orange noise + stripes; per-pixel
  noise on both. The alpha ramps linearly over ``soft`` pixels across the blob's edge.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  t1, t2 = _noise(rng, (h, w), 4), _noise(rng, (h, w), 1)
  checks = ((xx // 6 + yy // 6) % 2) - 0.5
  bg = np.stack(
    [0.2 + 0.06 * t1, 0.5 + 0.1 * t1 + 0.1 * checks, 0.45 + 0.08 * t2 + 0.1 * checks], -1
  )
  f1, f2 = _noise(rng, (h, w), 3), _noise(rng, (h, w), 1)
  stripes = np.sin((xx + yy) / 3.0)
  fg = np.stack(
    [0.8 + 0.08 * f1 + 0.06 * stripes, 0.4 + 0.1 * f2, 0.2 + 0.05 * f1 + 0.05 * stripes], -1
  )
  fg = np.clip(fg + noise * rng.standard_normal(fg.shape), 0, 1)
  bg = np.clip(bg + noise * rng.standard_normal(bg.shape), 0, 1)
  cy, cx = h * 0.5 + rng.uniform(-10, 10), w * 0.5 + rng.uniform(-10, 10)
  theta = np.arctan2(yy - cy, xx - cx)
  radius = 0.3 * min(h, w) * (1 + 0.15 * np.sin(3 * theta + seed) + 0.07 * np.cos(7 * theta))
  alpha = np.clip((radius - np.hypot(yy - cy, xx - cx)) / soft + 0.5, 0, 1)
  image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
  return np.rint(image * 255).astype(np.uint8), alpha, fg, bg


def blocky_mask(alpha: np.ndarray, patch: int, n_wrong: int = 1, seed: int = 0) -> np.ndarray:
  """Full-resolution mask as the eigenvector pipeline makes it, with 2·n_wrong border errors.

  Patch majority vote → flip ``n_wrong`` foreground patches on the edge to background and
  ``n_wrong`` background patches touching the object to foreground → ×P block replication,
  the bottom/right remainder repeating the last row/column.
  """
  h, w = alpha.shape
  gh, gw = h // patch, w // patch
  grid = alpha[: gh * patch, : gw * patch].reshape(gh, patch, gw, patch).mean((1, 3)) > 0.5
  inner_edge = np.argwhere(grid & ~ndimage.binary_erosion(grid))
  outer_edge = np.argwhere(ndimage.binary_dilation(grid) & ~grid)
  rng = np.random.default_rng(seed)
  wrong = grid.copy()
  for i in rng.choice(len(inner_edge), n_wrong, replace=False):
    wrong[tuple(inner_edge[i])] = False
  for i in rng.choice(len(outer_edge), n_wrong, replace=False):
    wrong[tuple(outer_edge[i])] = True
  full = np.repeat(np.repeat(wrong, patch, 0), patch, 1)
  return np.pad(full, ((0, h - gh * patch), (0, w - gw * patch)), mode='edge')


def iou(a: np.ndarray, b: np.ndarray) -> float:
  return float((a & b).sum() / max((a | b).sum(), 1))


# ----------------------------------------------------------------------------- trimap


def test_trimap_band_around_mask_edge():
  mask = np.zeros((96, 128), bool)
  mask[32:64, 48:96] = True
  tri = matting.trimap_from_mask(mask, band_px=8)
  assert tri.dtype == np.uint8 and tri.shape == mask.shape
  assert set(np.unique(tri)) == {matting.BACKGROUND, matting.UNKNOWN, matting.FOREGROUND}
  assert (
    not (tri == matting.FOREGROUND)[~mask].any() and not (tri == matting.BACKGROUND)[mask].any()
  )
  dist_to_edge = np.where(
    mask, ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask)
  )
  assert (tri[dist_to_edge > 8] != matting.UNKNOWN).all()  # only the band is unknown
  assert (tri[dist_to_edge <= 7] == matting.UNKNOWN).all()
  assert (tri[40:56, 60:84] == matting.FOREGROUND).all()


def test_trimap_small_object_keeps_a_core_and_edge_cases():
  mask = np.zeros((64, 64), bool)
  mask[24:40, 24:40] = True  # one 16 px patch, band 16 would erode it away entirely
  tri = matting.trimap_from_mask(mask, band_px=16)
  assert (tri == matting.FOREGROUND).any() and (tri == matting.BACKGROUND).any()
  assert (matting.trimap_from_mask(np.zeros((8, 8), bool), 4) == matting.BACKGROUND).all()
  assert (matting.trimap_from_mask(np.ones((8, 8), bool), 4) == matting.FOREGROUND).all()
  np.testing.assert_array_equal(matting.trimap_from_mask(mask, 0) == matting.FOREGROUND, mask)


# ----------------------------------------------------------------------------- matting


def test_matting_system_is_symmetric_and_annihilates_constants():
  image, alpha, _, _ = scene(48, 64, seed=3)
  tri = matting.trimap_from_mask(alpha > 0.5, 6)
  a, b, u_idx = matting.matting_system(image, tri, eps=1e-6)
  assert a.shape == (u_idx.size, u_idx.size)
  assert abs(a - a.T).max() < 1e-8 * abs(a).max()
  # All-foreground constraints: α ≡ 1 minimises αᵀLα (L·1 = 0), i.e. A·1 = b with b from α_k = 1.
  tri_fg = np.where(tri == matting.UNKNOWN, matting.UNKNOWN, matting.FOREGROUND).astype(np.uint8)
  a1, b1, _ = matting.matting_system(image, tri_fg, eps=1e-6)
  np.testing.assert_allclose(a1 @ np.ones(a1.shape[0]), b1, atol=1e-6 * abs(a1).max())


def test_closed_form_alpha_is_exact_for_two_colour_images():
  """Levin et al. (thm. 2): if F and B are locally constant, α is recovered exactly."""
  h, w = 60, 80
  yy, xx = np.mgrid[0:h, 0:w]
  alpha = np.clip((xx - 30) / 20 + 0.1 * np.sin(yy / 5), 0, 1)
  f, b = np.array([0.9, 0.3, 0.1]), np.array([0.1, 0.4, 0.8])
  image = alpha[..., None] * f + (1 - alpha[..., None]) * b  # float, no quantisation
  tri = np.full((h, w), matting.UNKNOWN, np.uint8)
  tri[:, :20], tri[:, 60:] = matting.BACKGROUND, matting.FOREGROUND
  got = matting.closed_form_alpha(image, tri, eps=1e-9)
  np.testing.assert_allclose(got, alpha, atol=2e-3)


@pytest.mark.parametrize('patch,seed', [(16, 0), (16, 1), (8, 2)])
def test_matte_recovers_soft_alpha_from_blocky_mask(patch, seed):
  image, alpha, _, _ = scene(240, 320, seed=seed, soft=4.0)
  mask = blocky_mask(alpha, patch, n_wrong=1, seed=seed)
  start = time.perf_counter()
  got = matting.matte(image, mask, band_px=patch, eps=1e-6)
  elapsed = time.perf_counter() - start
  assert got.shape == alpha.shape and got.dtype == np.float32
  assert 0 <= got.min() and got.max() <= 1
  truth = alpha > 0.5
  mask_iou, matte_iou = iou(mask, truth), iou(got > 0.5, truth)
  mask_mae, matte_mae = np.abs(mask - alpha).mean(), np.abs(got - alpha).mean()
  # Measured: IoU ≥ 0.992, MAE ≤ 0.006 (mask: IoU 0.87–0.94, MAE 0.015–0.031).
  assert matte_iou >= 0.98, (matte_iou, mask_iou)
  assert matte_mae <= 0.012, (matte_mae, mask_mae)
  assert matte_iou >= mask_iou + 0.03  # clearly better than the blocky mask …
  assert matte_mae <= mask_mae / 3  # … on both counts
  # Fractional alpha is recovered too, not just a sharper binary edge.
  soft = (alpha > 0.1) & (alpha < 0.9)
  assert np.abs(got - alpha)[soft].mean() < 0.15
  assert elapsed < 10


def test_reduced_resolution_path_keeps_quality():
  image, alpha, _, _ = scene(480, 640, seed=4, soft=6.0)
  mask = blocky_mask(alpha, 16, n_wrong=2, seed=4)
  full = matting.matte(image, mask, band_px=16, max_pixels=10**9)
  reduced = matting.matte(image, mask, band_px=16, max_pixels=480 * 640 // 6)  # ~2.4× smaller side
  truth = alpha > 0.5
  assert iou(reduced > 0.5, truth) >= 0.98
  assert np.abs(reduced - alpha).mean() <= 0.015
  assert np.abs(reduced - full).mean() <= 0.01
  assert np.abs(reduced - alpha).mean() <= np.abs(mask - alpha).mean() / 2


def test_huge_image_bounded_time_and_memory():
  # A 12 MP photo (made by enlarging a small scene, which keeps the test fast).
  small, alpha_small, _, _ = scene(300, 400, seed=5, soft=3.0)
  hw = (3000, 4000)
  image = np.asarray(Image.fromarray(small).resize(hw[::-1], Image.Resampling.BILINEAR))
  alpha = matting.resize_image(alpha_small.astype(np.float32), hw)
  mask = blocky_mask(alpha, 16, n_wrong=1, seed=5)
  tracemalloc.start()
  start = time.perf_counter()
  got = matting.matte(image, mask, band_px=16, max_pixels=500_000)
  elapsed = time.perf_counter() - start
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert got.shape == hw and got.dtype == np.float32
  assert iou(got > 0.5, alpha > 0.5) >= 0.98
  assert np.abs(got - alpha).mean() < np.abs(mask - alpha).mean() / 2
  # Memory is the float32 output plus a little per full-resolution pixel, plus the solve at
  # the working resolution: measured 1–2 s and 177 MB ≈ 4 B·(H·W) + 210 B·max_pixels. A
  # full-resolution solve would build a multi-million-unknown system instead.
  assert elapsed < 30, elapsed
  assert peak < 6 * hw[0] * hw[1] + 400 * 500_000, peak / 1e6


def test_degenerate_masks():
  image, _, _, _ = scene(64, 64)
  assert (matting.matte(image, np.zeros((64, 64), bool), 8) == 0).all()
  assert (matting.matte(image, np.ones((64, 64), bool), 8) == 1).all()
  # A patch-level (not upsampled) mask is accepted and resized.
  grid = np.zeros((4, 4), bool)
  grid[1:3, 1:3] = True
  got = matting.matte(image, grid, 16)
  assert got.shape == (64, 64) and got[32, 32] == 1 and got[2, 2] == 0


def test_grayscale_and_rgba_arrays():
  image, alpha, _, _ = scene(96, 128, seed=6)
  mask = blocky_mask(alpha, 8, seed=6)
  gray = image.mean(-1).astype(np.uint8)
  rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
  np.testing.assert_array_equal(matting.matte(rgba, mask, 8), matting.matte(image, mask, 8))
  got = matting.matte(gray, mask, 8)
  assert got.shape == alpha.shape and np.isfinite(got).all()
  assert matting.cutout_rgba(gray, got).shape == (96, 128, 4)
  assert matting.composite(gray[..., None], got, 'black').shape == (96, 128, 3)


# ----------------------------------------------------------------------------- colours & outputs


def test_blur_fusion_foreground_beats_naive_and_is_exact_where_opaque():
  image, alpha, fg, _ = scene(200, 260, seed=7, soft=8.0)
  est = matting.estimate_foreground(image, alpha)
  assert est.shape == image.shape and est.dtype == np.float32
  opaque = alpha >= 1
  np.testing.assert_allclose(est[opaque], image[opaque] / 255.0, atol=1e-6)
  soft = (alpha > 0.05) & (alpha < 0.95)
  naive_err = np.abs(image / 255.0 - fg)[soft].mean()
  fused_err = np.abs(est - fg)[soft].mean()
  assert fused_err < naive_err / 2, (fused_err, naive_err)
  # Row strips with a halo give exactly the whole-image answer.
  np.testing.assert_array_equal(matting.estimate_foreground(image, alpha, strip_rows=37), est)


def test_cutout_rgba():
  image, alpha, _, _ = scene(64, 80, seed=8)
  out = matting.cutout_rgba(image, alpha)
  assert out.shape == (64, 80, 4) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 3], np.rint(alpha * 255).astype(np.uint8))
  assert (out[alpha == 0][:, :3] == 0).all()
  np.testing.assert_array_equal(out[alpha == 1][:, :3], image[alpha == 1])
  naive = matting.cutout_rgba(image, alpha, foreground=image / 255.0)
  np.testing.assert_array_equal(naive[alpha > 0][:, :3], image[alpha > 0])


def test_composite_colour_and_image_backgrounds():
  image, alpha, _, _ = scene(64, 80, seed=9)
  out = matting.composite(image, alpha, '#ff8000')
  assert out.shape == (64, 80, 3) and out.dtype == np.uint8
  assert (out[alpha == 0] == [255, 128, 0]).all()
  np.testing.assert_array_equal(out[alpha == 1], image[alpha == 1])
  # An image background of another size and aspect ratio is scaled to cover, then cropped.
  bg = np.zeros((30, 200, 3), np.uint8)
  bg[..., 2] = 200
  out = matting.composite(image, alpha, bg)
  assert out.shape == (64, 80, 3)
  assert (out[alpha == 0] == [0, 0, 200]).all()
  assert matting.cover_resize(bg, (64, 80)).shape == (64, 80, 3)
  # The composite is αF + (1−α)B with the estimated F.
  fg = matting.estimate_foreground(image, alpha)
  expected = alpha[..., None] * fg + (1 - alpha[..., None]) * np.array([1.0, 1.0, 1.0])
  got = matting.composite(image, alpha, 'white', fg) / 255.0
  assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
  'spec,rgb',
  [
    ('white', (255, 255, 255)),
    ('Black', (0, 0, 0)),
    ('#FF8000', (255, 128, 0)),
    ('#f80', (255, 136, 0)),
    ('255,128,0', (255, 128, 0)),
    (' 10, 20 ,30 ', (10, 20, 30)),
    ('rgb(1,2,3)', (1, 2, 3)),
    ((4, 5, 6), (4, 5, 6)),
    ([7, 8, 9], (7, 8, 9)),
  ],
)
def test_parse_color(spec, rgb):
  assert matting.parse_color(spec) == rgb


@pytest.mark.parametrize('spec', ['nocolour', '300,0,0', '1,2', '#12345', '', 'a,b,c', (1, 2)])
def test_parse_color_rejects(spec):
  with pytest.raises(ValueError):
    matting.parse_color(spec)


def test_edit_tiles():
  image, alpha, _, _ = scene(100, 150, seed=10)
  grid = np.zeros((6, 9), bool)
  grid[2:4, 3:6] = True
  comp = matting.composite(image, alpha, 'white')
  tiles = matting.edit_tiles(image, grid, alpha, comp)
  assert [t.shape for t in tiles] == [(100, 150, 3)] * 4 and tiles[0].dtype == np.uint8
  np.testing.assert_array_equal(tiles[0], image)
  np.testing.assert_array_equal(tiles[3], comp)
  # The patch grid's foreground (rows 2-3, cols 3-5 of 6×9 → pixels) is tinted, the rest dimmed.
  assert (tiles[1][40, 60] != image[40, 60]).any()
  np.testing.assert_array_equal(tiles[1][5, 5], (image[5, 5] * 0.4).astype(np.uint8))
  without = matting.edit_tiles(image, alpha > 0.5, alpha)  # cutout on a checkerboard instead
  assert [t.shape for t in without] == [t.shape for t in tiles]
  big = matting.edit_tiles(np.zeros((1000, 500, 3), np.uint8), grid, np.zeros((1000, 500)))
  assert {t.shape[0] for t in big} == {384}


def test_decoded_odd_files_reach_the_matte(tmp_path):
  image, alpha, _, _ = scene(64, 96, seed=11)
  mask = blocky_mask(alpha, 8, seed=11)
  Image.fromarray(image.mean(-1).astype(np.uint8), 'L').save(tmp_path / 'gray.png')
  Image.fromarray(np.concatenate([image, np.full((64, 96, 1), 7, np.uint8)], -1), 'RGBA').save(
    tmp_path / 'rgba.png'
  )
  Image.fromarray((image[..., 0].astype(np.uint16) * 257)).save(tmp_path / 'deep.png')
  for name in ('gray.png', 'rgba.png', 'deep.png'):
    rgb = decode.load_rgb(tmp_path / name)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
    got = matting.matte(rgb, mask, 8)
    assert got.shape == (64, 96) and np.isfinite(got).all()


# ----------------------------------------------------------------------------- --mode=edit


def _write_scene(path, seed: int, hw=(160, 224)) -> np.ndarray:
  image, alpha, _, _ = scene(*hw, seed=seed, soft=3.0)
  Image.fromarray(image).save(path)
  return alpha


def _fake_eigs(alpha: np.ndarray, patch: int = 16, seed: int = 0) -> np.ndarray:
  """Eigenvectors [3, N] whose Fiedler vector is > 0 on the (blocky, 2 patches wrong) object."""
  h, w = alpha.shape[0] // patch, alpha.shape[1] // patch
  grid = blocky_mask(alpha, patch, n_wrong=1, seed=seed)[: h * patch : patch, : w * patch : patch]
  rng = np.random.default_rng(seed)
  fiedler = np.where(grid, 1.0, -1.0).ravel() + 0.01 * rng.standard_normal(h * w)
  return np.stack([np.ones(h * w), fiedler, 0.1 * rng.standard_normal(h * w)]).astype(np.float32)


class FakeExtract:
  """Stands in for ``extract.run`` (no ViT weights offline): eigs from the known alphas."""

  def __init__(self, alphas: dict):
    self.alphas = alphas
    self.calls = []

  def __call__(self, config, workdir):
    from spectral_jax import artifacts as sj_io
    from spectral_jax.tasks import common

    self.calls.append(config.data.root)
    skipped = common.SkipLog(workdir, 'extract')
    for ex in common.examples_from_config(config.data):
      out = Path(workdir) / 'eigs' / f'{ex.id}.npz'
      if out.exists():
        continue
      if ex.id not in self.alphas:
        skipped(ex, ValueError('unreadable'))
        continue
      vecs = _fake_eigs(self.alphas[ex.id])
      sj_io.save_npz(out, eigenvalues=np.array([0.0, 0.1, 0.2]), eigenvectors=vecs)


def _edit_config(root, **edit_overrides):
  from configs import edit as edit_config

  config = edit_config.get_config()
  config.data.root = str(root)
  config.output.num_panels = 1
  config.model.name = 'dino_vits16'
  for k, v in edit_overrides.items():
    config.edit[k] = v
  config.lock()  # as main.py passes it
  return config


@pytest.fixture
def photo_dir(tmp_path):
  root = tmp_path / 'photos'
  root.mkdir()
  alphas = {'a': _write_scene(root / 'a.png', 20), 'b': _write_scene(root / 'b.jpg', 21)}
  (root / 'broken.png').write_bytes(b'not an image at all')
  return root, alphas


def test_task_folder_outputs_resume_and_bad_image(photo_dir, tmp_path, monkeypatch):
  root, alphas = photo_dir
  fake = FakeExtract(alphas)
  monkeypatch.setattr(task.extract, 'run', fake)
  work = tmp_path / 'out'
  task.run(_edit_config(root, background='white'), str(work))
  assert len(fake.calls) == 1
  for stem, alpha in alphas.items():
    cut = np.asarray(Image.open(work / 'cutout' / f'{stem}.png'))
    assert cut.shape == alpha.shape + (4,) and cut.dtype == np.uint8
    got = cut[..., 3] / 255.0
    assert iou(got > 0.5, alpha > 0.5) >= 0.97, stem
    mask_mae = np.abs(blocky_mask(alpha, 16, 1, seed=0) - alpha).mean()
    assert np.abs(got - alpha).mean() < mask_mae / 2
    comp = np.asarray(Image.open(work / 'composite' / f'{stem}.png'))
    assert comp.shape == alpha.shape + (3,)
    far_bg = ndimage.binary_erosion(alpha == 0, iterations=3)  # (b is a JPEG: fuzzy edges)
    assert comp[far_bg].min(-1).mean() >= 250  # white where the truth is background …
    assert np.mean(comp[far_bg].min(-1) >= 240) >= 0.99  # … up to a little haze
  assert (work / 'panels' / 'edit_a.png').exists()  # num_panels = 1: the first image only
  assert not (work / 'panels' / 'edit_b.png').exists()
  assert not (work / 'cutout' / 'broken.png').exists()
  assert not list(work.rglob('*.tmp'))
  # Resume: nothing is redone, and the known-bad image does not trigger extraction again.
  stamps = {p: p.stat().st_mtime_ns for p in work.rglob('*.png')}
  task.run(_edit_config(root, background='white'), str(work))
  assert len(fake.calls) == 1
  assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob('*.png')}
  # A removed output is recomputed alone.
  (work / 'composite' / 'b.png').unlink()
  task.run(_edit_config(root, background='white'), str(work))
  assert (work / 'composite' / 'b.png').exists()
  assert (work / 'cutout' / 'a.png').stat().st_mtime_ns == stamps[work / 'cutout' / 'a.png']


def test_task_single_image_and_image_background(tmp_path, monkeypatch):
  photo = tmp_path / 'holiday.png'
  alpha = _write_scene(photo, 22)
  Image.fromarray(np.full((50, 400, 3), (10, 20, 200), np.uint8)).save(tmp_path / 'sky.png')
  fake = FakeExtract({'holiday': alpha})
  monkeypatch.setattr(task.extract, 'run', fake)
  work = tmp_path / 'out'
  task.run(_edit_config(photo, background=str(tmp_path / 'sky.png')), str(work))
  assert fake.calls == [str(photo)]  # extract takes the single file as its dataset too
  assert sorted(p.name for p in (work / 'cutout').iterdir()) == ['holiday.png']
  comp = np.asarray(Image.open(work / 'composite' / 'holiday.png'))
  assert comp.shape == alpha.shape + (3,)
  far_bg = ndimage.binary_erosion(alpha == 0, iterations=3)
  assert np.median(np.abs(comp[far_bg].astype(int) - (10, 20, 200)), axis=0).max() <= 1


def test_task_eigen_segment_path(tmp_path, monkeypatch):
  photo = tmp_path / 'seg.png'
  alpha = _write_scene(photo, 23)
  monkeypatch.setattr(task.extract, 'run', FakeExtract({'seg': alpha}))
  work = tmp_path / 'out'
  # Two clusters of the eigenvector embedding: 0 = the border-most (background), 1 = object.
  task.run(_edit_config(photo, segment=1, n_segments=2), str(work))
  got = np.asarray(Image.open(work / 'cutout' / 'seg.png'))[..., 3] / 255.0
  assert iou(got > 0.5, alpha > 0.5) >= 0.97
  assert not (work / 'composite').exists()


def test_task_rejects_bad_options(tmp_path):
  with pytest.raises(ValueError, match='neither an image file nor a colour'):
    task.run(_edit_config(tmp_path, background='notacolour'), str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError):
    task.run(_edit_config(tmp_path, background='missing/bg.jpg'), str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='n_segments'):
    task.run(_edit_config(tmp_path, segment=5, n_segments=4), str(tmp_path / 'out'))
  assert cutout.resolve_background('') is None
  assert cutout.resolve_background(' 1,2,3 ') == (1, 2, 3)


def test_documented_command_line(tmp_path):
  """The command in configs/edit.py, with eigenvectors already in the workdir (no weights)."""
  import subprocess
  import sys
  from spectral_jax import artifacts as sj_io

  repo = Path(__file__).resolve().parents[1]
  photo = tmp_path / 'cat.png'
  alpha = _write_scene(photo, 30)
  work = tmp_path / 'out'
  # Eigenvectors made by an extract with the command's settings (its record says so).
  from configs import edit as edit_config
  from spectral_jax.tasks import common

  config = edit_config.get_config()
  config.data.root = str(photo)
  common.begin_stage(config, work, 'extract')
  sj_io.save_npz(work / 'eigs' / 'cat.npz', eigenvalues=np.zeros(3), eigenvectors=_fake_eigs(alpha))
  cmd = [
    sys.executable,
    'main.py',
    '--config=configs/edit.py',
    '--mode=edit',
    f'--config.data.root={photo}',
    '--config.edit.background=#00ff00',
    f'--workdir={work}',
  ]
  proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert np.asarray(Image.open(work / 'cutout' / 'cat.png')).shape == alpha.shape + (4,)
  comp = np.asarray(Image.open(work / 'composite' / 'cat.png'))
  assert tuple(np.median(comp[alpha == 0], axis=0)) == (0, 255, 0)
  assert (work / 'panels' / 'edit_cat.png').exists()


def test_task_with_real_extraction(photo_dir, tmp_path):
  """extract → eigs → edit for real, with the tiny random-weight checkpoint the parity tests
  use (its masks mean nothing: this checks the plumbing, not the quality)."""
  checkpoint = PARITY / 'checkpoint.pth'
  root, alphas = photo_dir
  # 120 × 160: the model sees a 112 × 160 crop (7 × 10 patches), and 120 // 7 = 17 is not
  # the patch size (17 × 10 > 160 columns).
  alphas = dict(alphas, odd=_write_scene(root / 'odd.png', 22, hw=(120, 160)))
  from configs import edit as edit_config

  config = edit_config.get_config()
  config.data.root = str(root)
  config.model.checkpoint = str(checkpoint)
  config.edit.background = 'white'
  work = tmp_path / 'out'
  task.run(config, str(work))
  for stem, alpha in alphas.items():
    assert (work / 'eigs' / f'{stem}.npz').exists()
    assert np.asarray(Image.open(work / 'cutout' / f'{stem}.png')).shape == alpha.shape + (4,)
    assert np.asarray(Image.open(work / 'composite' / f'{stem}.png')).shape == alpha.shape + (3,)
    assert (work / 'panels' / f'edit_{stem}.png').exists()
  assert not (work / 'eigs' / 'broken.npz').exists()
  assert 'broken' in (work / 'skipped.jsonl').read_text()
  assert 'odd' not in (work / 'skipped.jsonl').read_text()
  stamps = {p: p.stat().st_mtime_ns for p in work.rglob('*.png')}
  task.run(config, str(work))  # resumes without loading the model or redoing anything
  assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob('*.png')}


def test_eigen_frame_takes_the_stored_patch_size_and_infers_it_for_older_records():
  record = dict(
    eigenvectors=np.zeros((3, 70), np.float32),
    patch_grid=np.array([7, 10]),
    image_size=np.array([120, 170]),
    working_size=np.array([120, 170]),
  )
  assert task.eigen_frame(record, (120, 170)) == (16, (7, 10), (120, 170))  # no patch_size
  assert task.eigen_frame(dict(record, patch_size=np.array(16)), (120, 170))[0] == 16
  with pytest.raises(ValueError, match='overwrite'):
    task.eigen_frame(record, (121, 170))
