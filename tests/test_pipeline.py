"""pipeline.py: padded/bucketed batches give the same features and eigenpairs as exact sizes."""

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from spectral_jax import compile_cache, pipeline
from spectral_jax.data import datasets
from spectral_jax.results import boxes
from tests.conftest import PARITY, PARITY_IDS


@pytest.fixture(scope='module')
def extractor(tmp_path_factory):
  return pipeline.load_extractor(
    'dino_vits16', str(PARITY / 'checkpoint.pth'), str(tmp_path_factory.mktemp('cache'))
  )


def examples(tmp_path):
  """The parity photos plus crops of them, so that sizes differ within buckets."""
  out = []
  for image_id in PARITY_IDS:
    out.append(datasets.Example(id=image_id, path=str(PARITY / 'images' / f'{image_id}.png')))
  image = np.array(Image.open(PARITY / 'images' / 'coffee.png'))
  for name, crop in {
    'c1': image[:390, :590],
    'c2': image[:300, :500],
    'c3': image[:100, :70],
  }.items():
    Image.fromarray(crop).save(tmp_path / f'{name}.png')
    out.append(datasets.Example(id=name, path=str(tmp_path / f'{name}.png')))
  return out


def run(extractor, exs, **kw):
  return {r.example.id: r for r in pipeline.run_images(extractor, exs, spectral_k=5, **kw)}


def test_bucketed_batches_equal_exact_sizes(extractor, tmp_path):
  exs = examples(tmp_path)
  exact = run(extractor, exs, batch_size=1, bucket_tokens=0)
  extractor.compiled_shapes.clear()
  bucketed = run(extractor, exs, batch_size=4, bucket_tokens=512)
  assert len(extractor.compiled_shapes) < len(exs)
  for image_id, ref in exact.items():
    got = bucketed[image_id]
    assert got.patch_grid == ref.patch_grid
    scale = np.abs(ref.features).max()
    np.testing.assert_allclose(got.features, ref.features, atol=1e-5 * scale)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, atol=1e-5)
    fiedler_cos = abs(got.eigenvectors[1] @ ref.eigenvectors[1]) / (
      np.linalg.norm(got.eigenvectors[1]) * np.linalg.norm(ref.eigenvectors[1])
    )
    assert fiedler_cos > 0.999


def test_parity_features_through_buckets(extractor, tmp_path):
  """The official features, computed with the images padded inside one bucket."""
  exs = examples(tmp_path)[:3]
  results = run(extractor, exs, batch_size=3, bucket_tokens=1024)
  assert len({r.patch_grid for r in results.values()}) == 3
  for image_id in PARITY_IDS:
    ref = np.load(PARITY / f'{image_id}.npz')
    got = results[image_id]
    assert np.abs(got.features - ref['k']).max() <= 1e-4 * np.abs(ref['k']).max()
    np.testing.assert_allclose(got.eigenvalues, ref['loc_eigenvalues'], atol=1e-4)


def test_bucket_length():
  assert pipeline.bucket_length((25, 37), 32) == 928  # 925 tokens
  assert pipeline.bucket_length((25, 37), 0) == 925
  assert pipeline.bucket_length((32, 32), 64) == 1024


def test_geometric_ladder():
  """Rungs ×2^(1/3), multiples of 16: every power of two is one, the cap is one, and the
  token count itself is never cut."""
  rungs, n = [], 1
  while n <= 8192:
    rungs.append(pipeline.ladder_length(n))
    n = rungs[-1] + 1
  assert rungs[:4] == [64, 96, 112, 128] and 1024 in rungs and 8192 in rungs
  assert all(r % 16 == 0 for r in rungs)
  assert all(1.2 <= b / a <= 1.35 for a, b in zip(rungs, rungs[1:]) if a >= 256)
  assert len([r for r in rungs if 144 <= r <= 6512]) == 17  # ~50 sizes of a folder: ≤ 17 rungs
  assert pipeline.ladder_length(713) == 816  # VOC's 500×375 at patch 16: +14 %
  assert pipeline.ladder_length(6300, 6400) == 6400  # downscaled images: up to max_tokens
  assert pipeline.ladder_length(6500, 6400) == 6500  # ('pad' grids may pass it: exact)
  assert pipeline.bucket_length((25, 37), pipeline.GEOMETRIC) == 1024
  assert [pipeline.padded_count(c, 8) for c in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
  assert pipeline.padded_count(5, 6) == 6 and pipeline.padded_count(3, 3) == 3


def _many_sizes(tmp_path, count, seed, low, high):
  """``count`` crops of the parity photos, each of its own random size."""
  rng = np.random.default_rng(seed)
  photos = [np.array(Image.open(PARITY / 'images' / f'{i}.png')) for i in PARITY_IDS]
  out = []
  for i in range(count):
    image = photos[i % len(photos)]
    h = int(rng.integers(low, min(high, image.shape[0]) + 1))
    w = int(rng.integers(low, min(high, image.shape[1]) + 1))
    y, x = (
      int(rng.integers(0, image.shape[0] - h + 1)),
      int(rng.integers(0, image.shape[1] - w + 1)),
    )
    Image.fromarray(image[y : y + h, x : x + w]).save(tmp_path / f'm{i:02d}.png')
    out.append(datasets.Example(id=f'm{i:02d}', path=str(tmp_path / f'm{i:02d}.png')))
  return out


def test_geometric_buckets_equal_exact_sizes_on_a_folder_of_many_sizes(extractor, tmp_path):
  """The default buckets (ladder lengths, batches padded to powers of two) give the boxes and
  eigenpairs of exact token counts, one image at a time."""
  exs = _many_sizes(tmp_path, 14, 1, 40, 400)
  exact = run(extractor, exs, batch_size=1, bucket_tokens=0)
  extractor.compiled_shapes.clear()
  geometric = run(extractor, exs, batch_size=8, bucket_tokens=pipeline.GEOMETRIC)
  assert len({r.patch_grid[0] * r.patch_grid[1] for r in exact.values()}) >= len(exs) - 1
  lengths = {shape[0][1] for shape in extractor.compiled_shapes}
  assert lengths <= {pipeline.ladder_length(n) for n in range(1, 626)}  # ≤ 25×25 patches
  assert len(extractor.compiled_shapes) < len(exs)
  for image_id, ref in exact.items():
    got = geometric[image_id]
    assert got.patch_grid == ref.patch_grid
    assert np.array_equal(boxes.localization(got)[0], boxes.localization(ref)[0]), image_id
    scale = np.abs(ref.features).max()
    np.testing.assert_allclose(got.features, ref.features, atol=1e-5 * scale)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, atol=1e-5)
    for k in range(1, len(ref.eigenvalues)):
      cos = abs(got.eigenvectors[k] @ ref.eigenvectors[k]) / (
        np.linalg.norm(got.eigenvectors[k]) * np.linalg.norm(ref.eigenvectors[k])
      )
      assert cos > 0.999, (image_id, k, cos)


def test_twenty_sizes_compile_a_handful_of_shapes(tmp_path):
  """20 images, 20 token counts (exact sizes would compile 20 forwards and 20 eigen steps):
  the default buckets compile at most 9 of each, counted by JAX itself."""
  rng = np.random.default_rng(1)
  sizes = [(int(h), int(w)) for h, w in rng.integers(128, 481, (20, 2))]
  assert len({(h // 16) * (w // 16) for h, w in sizes}) == 20
  exs = []
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / f'{i}.png')
    exs.append(datasets.Example(id=str(i), path=str(tmp_path / f'{i}.png')))
  extractor = pipeline.load_extractor(
    'dino_vits16', str(PARITY / 'checkpoint.pth'), str(tmp_path / 'cache')
  )
  with compile_cache.watch() as compiles:
    results = run(extractor, exs, batch_size=8, bucket_tokens=pipeline.GEOMETRIC)
  assert len(results) == 20
  assert len(extractor.compiled_shapes) <= 9
  # Every XLA compile request (cache hits too): the forwards, the eigen steps and 3 small
  # helpers; none per image size (position tables are made on the host).
  assert compiles.requests <= 2 * len(extractor.compiled_shapes) + 3


def test_transposed_sizes_share_a_batch_without_padding(extractor):
  """500×375 and 375×500 have the same token count: one shape, both equal to their own run."""
  image = np.array(Image.open(PARITY / 'images' / 'coffee.png'))  # 400×600
  wide, tall = image[:160, :224], image[:224, :160]
  batch = list(pipeline.size_batches([('w', wide), ('t', tall)], 16, 4, 0))
  assert len(batch) == 1 and len(batch[0]) == 2
  both = np.asarray(extractor([wide, tall])['k'])
  assert both.shape[1] == 140
  for row, crop in zip(both, [wide, tall]):
    alone = np.asarray(extractor([crop])['k'])[0]
    np.testing.assert_allclose(row, alone, atol=1e-5 * np.abs(alone).max())


def test_few_compiled_shapes_on_a_voc_like_size_mix():
  """VOC images are mostly 500 px on the long side with many short sides."""
  rng = np.random.default_rng(0)
  sizes = [(int(s), 500) for s in rng.integers(200, 500, 300)] + [
    (500, int(s)) for s in rng.integers(200, 500, 100)
  ]
  images = [(i, np.zeros((h, w, 3), np.uint8)) for i, (h, w) in enumerate(sizes)]
  exact = {(h // 16, w // 16) for h, w in sizes}
  batches = list(pipeline.size_batches(images, 16, 8, bucket_tokens=64))
  lengths = {
    pipeline.bucket_length((b[0][1].shape[0] // 16, b[0][1].shape[1] // 16), 64) for b in batches
  }
  tokens = sum((h // 16) * (w // 16) for h, w in sizes)
  padded = sum(
    len(b) * pipeline.bucket_length((b[0][1].shape[0] // 16, b[0][1].shape[1] // 16), 64)
    for b in batches
  )
  assert sum(len(b) for b in batches) == len(images)
  assert len(exact) > 30 and len(lengths) <= 12
  assert padded / tokens < 1.06  # vs ~12 % for grids rounded up to 4 patches


def test_cls_batch_equals_one_crop_at_a_time(extractor):
  image = np.array(Image.open(PARITY / 'images' / 'astronaut.png'))
  crops = [image[:64, :96], image[16:96, 32:80], image[:48, :48], image[100:260, 200:440]]
  got = pipeline.cls_batch(extractor, crops)
  for crop, row in zip(crops, got):
    ref = np.asarray(extractor([crop], with_cls=True)['cls'][0])
    np.testing.assert_allclose(row, ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize('hw', [(4000, 3000), (3000, 4000), (300, 20000), (8000, 6000), (401, 99)])
@pytest.mark.parametrize('patch,max_tokens', [(16, 6400), (8, 6400), (14, 1000)])
def test_working_size_fits_the_budget_and_keeps_the_aspect(hw, patch, max_tokens):
  h, w = pipeline.working_size(hw, patch, max_tokens)
  assert (h // patch) * (w // patch) <= max_tokens
  if (hw[0] // patch) * (hw[1] // patch) <= max_tokens:
    assert (h, w) == hw
  else:
    assert abs(h / w - hw[0] / hw[1]) <= 2.0 / min(h, w) * max(1.0, hw[0] / hw[1])
    # Nearly the whole budget is used (whole patches lost to rounding on a short side).
    assert (h // patch) * (w // patch) >= (1 - 1.5 * patch / min(h, w)) * 0.99 * max_tokens


def test_benchmark_sizes_are_never_downscaled():
  """VOC, COCO and the saliency sets are at most 640 px a side: unchanged at patch 8."""
  for hw in [(640, 640), (500, 375), (640, 480), (300, 640)]:
    assert pipeline.working_size(hw, 8, 6400) == hw


def test_scale_box_and_resize_mask_against_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(50):
    small = tuple(int(v) for v in rng.integers(20, 60, 2))
    big = tuple(int(v) for v in rng.integers(60, 300, 2))
    mask = np.zeros(small, bool)
    y0, x0 = (int(rng.integers(0, s - 5)) for s in small)
    mask[y0 : y0 + 5, x0 : x0 + 4] = True
    full = pipeline.resize_mask(mask, big)
    assert full.shape == big
    ys, xs = np.nonzero(full)
    box = pipeline.scale_box([x0, y0, x0 + 4, y0 + 5], small, big)
    # The scaled box covers every pixel of the scaled mask and stays inside the image.
    assert box[0] <= xs.min() and box[1] <= ys.min()
    assert box[2] >= xs.max() + 1 and box[3] >= ys.max() + 1
    assert 0 <= box[0] < box[2] <= big[1] and 0 <= box[1] < box[3] <= big[0]
    # Brute-force nearest: each output pixel takes the input pixel whose cell holds its centre.
    i, j = int(rng.integers(0, big[0])), int(rng.integers(0, big[1]))
    src = mask[int((i + 0.5) * small[0] / big[0]), int((j + 0.5) * small[1] / big[1])]
    assert full[i, j] == src


def test_batches_respect_the_token_budget():
  images = [(i, np.zeros((h, 640, 3), np.uint8)) for i, h in enumerate([640] * 9 + [64] * 20)]
  for batch in pipeline.size_batches(images, 8, 8, 64, batch_tokens=16384):
    tokens = sum((im.shape[0] // 8) * (im.shape[1] // 8) for _, im in batch)
    assert tokens <= 16384 or len(batch) == 1
    n = max((im.shape[0] // 8) * (im.shape[1] // 8) for _, im in batch)
    assert len(batch) * n * n <= pipeline.MAX_BATCH_PAIRS or len(batch) == 1
  assert pipeline.batch_capacity(6400, 8, 32768) == 1  # 6400² pairs: one image at a time
  assert pipeline.batch_capacity(736, 8, 32768) == 8  # VOC at patch 16: unchanged


def test_large_image_runs_downscaled_with_outputs_in_its_frame(extractor, tmp_path):
  image = np.array(Image.open(PARITY / 'images' / 'astronaut.png'))
  big = np.asarray(Image.fromarray(image).resize((1024, 1024)))
  Image.fromarray(big).save(tmp_path / 'big.png')
  ex = datasets.Example(id='big', path=str(tmp_path / 'big.png'))
  limits = pipeline.ImageLimits(max_tokens=1024)
  (r,) = pipeline.run_images(extractor, [ex], batch_size=1, limits=limits, spectral_k=5)
  assert r.original_hw == (1024, 1024) and r.image.shape[:2] == (512, 512) and r.resized
  assert r.patch_grid == (32, 32)
  # At working resolution the features are close to those of the 512² photo (the official
  # ones; bicubic up- then downscaling is not the identity).
  ref = np.load(PARITY / 'astronaut.npz')['k']
  norms = np.linalg.norm(r.features, axis=1) * np.linalg.norm(ref, axis=1)
  cos = np.sum(r.features * ref, 1) / norms
  assert np.median(cos) > 0.99
  skipped = []
  limits = pipeline.ImageLimits(max_tokens=1024, resize_large=False)
  out = list(
    pipeline.run_images(
      extractor, [ex], batch_size=1, limits=limits, on_error=lambda e, x: skipped.append(x)
    )
  )
  assert not out and 'resize_large=False' in str(skipped[0]) and 'big.png' in str(skipped[0])


def test_tiny_images_clamp_k_or_are_skipped_by_name(extractor, tmp_path):
  image = np.array(Image.open(PARITY / 'images' / 'chelsea.png'))
  sizes = {'thumb': (64, 64), 'strip': (16, 48), 'one_patch': (16, 16), 'normal': (96, 128)}
  exs = []
  for name, (h, w) in sizes.items():
    Image.fromarray(image[:h, :w]).save(tmp_path / f'{name}.png')
    exs.append(datasets.Example(id=name, path=str(tmp_path / f'{name}.png')))
  errors = {}
  results = {
    r.example.id: r
    for r in pipeline.run_images(
      extractor,
      exs,
      batch_size=4,
      spectral_k=40,
      on_error=lambda ex, e: errors.setdefault(ex.id, str(e)),
    )
  }
  assert set(results) == {'thumb', 'strip', 'normal'} and set(errors) == {'one_patch'}
  assert 'one_patch.png' in errors['one_patch'] and 'at least 3' in errors['one_patch']
  for name, r in results.items():
    n = r.patch_grid[0] * r.patch_grid[1]
    k = min(40, n - 1)
    assert r.eigenvalues.shape == (k,) and r.eigenvectors.shape == (k, n)
    assert np.isfinite(r.eigenvectors).all() and np.abs(r.eigenvectors[1]).max() > 0
    # An independent float64 oracle: the generalised problem of this image's graph.
    fn = r.features.astype(np.float64)
    fn = fn / np.linalg.norm(fn, axis=1, keepdims=True)
    w = np.maximum(fn @ fn.T, 0)
    w = w / w.max()
    d = np.diag(w.sum(1))
    ref = scipy.linalg.eigh(d - w, d, eigvals_only=True)[:k]
    np.testing.assert_allclose(r.eigenvalues, ref, atol=2e-4)


def test_an_image_too_elongated_to_downscale_is_named_with_its_own_size(tmp_path):
  """16 × 112,000 px is 7,000 patches of 16, above max_tokens=6,400: downscaled, its short
  side drops under one patch. The error names the file's size, then the working size."""
  path = tmp_path / 'strip.png'
  Image.fromarray(np.full((16, 112_000, 3), 128, np.uint8)).save(path)
  errors = []
  out = list(
    pipeline.decoded(
      [datasets.Example(id='strip', path=str(path))],
      16,
      on_error=lambda ex, e: errors.append(str(e)),
    )
  )
  assert out == [] and len(errors) == 1
  assert '112000x16, downscaled to' in errors[0] and 'data.max_tokens=6400' in errors[0]
