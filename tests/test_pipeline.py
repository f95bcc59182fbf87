"""pipeline.py: padded/bucketed batches give the same features and eigenpairs as exact sizes."""

import numpy as np
import pytest
from PIL import Image

from spectral_jax import pipeline
from spectral_jax.data import datasets
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
  return {
      r.example.id: r
      for r in pipeline.run_images(extractor, exs, spectral_k=5, **kw)
  }


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
  got = extractor.cls_batch(crops)
  for crop, row in zip(crops, got):
    ref = np.asarray(extractor([crop], with_cls=True)['cls'][0])
    np.testing.assert_allclose(row, ref, atol=1e-5 * np.abs(ref).max())
