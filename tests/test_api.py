"""spectral_jax's Python API: the CLI's boxes and masks, input kinds, return types, errors."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spectral_jax as sj
from spectral_jax.tasks import localize as localize_task
from spectral_jax.tasks import segment as segment_task
from tests.conftest import PARITY, PARITY_IDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = [str(PARITY / 'images' / f'{i}.png') for i in PARITY_IDS]


@pytest.fixture(scope='module')
def backbone(tmp_path_factory):
  return sj.load_backbone(
    'dino_vits16',
    checkpoint=PARITY / 'checkpoint.pth',
    cache_dir=tmp_path_factory.mktemp('cache'),
  )


def test_lazy_public_names_and_version():
  assert sj.__version__ == '0.2.0'
  from spectral_jax import workdirs  # pylint: disable=import-outside-toplevel

  assert workdirs.VERSION == sj.__version__
  for name in (
    'load_backbone',
    'eigenvectors',
    'localize',
    'segment',
    'discover',
    'remove_background',
    'Backbone',
    'Localization',
  ):
    assert name in dir(sj) and callable(getattr(sj, name))
  with pytest.raises(AttributeError):
    sj.nonesuch  # pylint: disable=pointless-statement


def test_boxes_equal_cli_and_official(backbone, parity_config, manifest, tmp_path):
  localize_task.run(parity_config, tmp_path / 'cli')
  cli = {
    r['id']: r
    for r in map(json.loads, (tmp_path / 'cli' / 'predictions.jsonl').read_text().splitlines())
  }
  results = sj.localize(backbone, PATHS)
  assert isinstance(results, list) and len(results) == 3
  for image_id, r in zip(PARITY_IDS, results):
    assert isinstance(r, sj.Localization)
    assert list(r.box_xyxy) == cli[image_id]['box_xyxy']
    assert list(r.box_xyxy) == manifest['images'][image_id]['loc_box_xyxy']
    assert list(r.box_xyxy) == np.load(PARITY / f'{image_id}.npz')['loc_box_xyxy'].tolist()
    assert list(r.image_size) == cli[image_id]['image_size']
    assert -1.0 <= r.score <= 1.0


@pytest.mark.slow  # ~40 s on 2 busy cores; test_tokencut.py / test_lost.py cover the methods
def test_tokencut_and_lost_boxes_equal_official(backbone):
  methods = ('tokencut', 'lost')
  assert set(methods) <= set(sj.localize_methods())
  manifest = json.loads((PARITY.parent / 'methods' / 'manifest.json').read_text())
  for method in methods:
    results = sj.localize(backbone, PATHS, method=method)
    for image_id, r in zip(PARITY_IDS, results):
      assert list(r.box_xyxy) == manifest['images'][image_id][f'{method}_box_xyxy'], method
  with pytest.raises(ValueError, match="method='nope'"):
    sj.localize(backbone, PATHS[0], method='nope')


def test_masks_equal_cli(backbone, parity_config, tmp_path):
  parity_config.spectral.K = 2  # configs/object_seg.py, what segment() reproduces
  segment_task.run(parity_config, tmp_path / 'cli')
  masks = sj.segment(backbone, PATHS)
  for image_id, mask in zip(PARITY_IDS, masks):
    cli = np.asarray(Image.open(tmp_path / 'cli' / 'masks' / f'{image_id}.png')) > 127
    assert mask.dtype == bool and mask.shape == cli.shape
    np.testing.assert_array_equal(mask, cli)
  # Official patch mask at the patch centres.
  seg = np.load(PARITY / 'astronaut.npz')['seg_mask']
  np.testing.assert_array_equal(masks[0][8::16, 8::16] > 0, seg > 0)


def same(a, b) -> bool:
  # Scores of different batch sizes agree to float32 rounding only.
  return (a.box_xyxy, a.image_size) == (b.box_xyxy, b.image_size) and abs(a.score - b.score) < 1e-5


def test_input_kinds_give_the_same_result(backbone):
  rgb = np.asarray(Image.open(PATHS[0]).convert('RGB'))
  rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
  gray = np.asarray(Image.open(PATHS[0]).convert('L'))
  inputs = [
    PATHS[0],
    Image.open(PATHS[0]),
    rgb,
    rgba,
    gray,
    gray[:, :, None],
    Image.fromarray(gray),
  ]
  results = sj.localize(backbone, inputs)
  assert len(results) == len(inputs)
  for r in results[1:4]:  # path, PIL, RGB, RGBA (alpha dropped): the same pixels
    assert same(r, results[0])
  for r in results[5:]:  # grayscale as [H, W], [H, W, 1] and a PIL 'L' image
    assert same(r, results[4])
  assert results[4].image_size == (512, 512)
  # One image in, one result out; a list of one, a list.
  single = sj.localize(backbone, rgb)
  assert isinstance(single, sj.Localization) and same(single, results[0])
  assert isinstance(sj.localize(backbone, [rgb]), list)


def test_eigenvectors_and_discover(backbone):
  e = sj.eigenvectors(backbone, PATHS[1], K=5)
  ref = np.load(PARITY / 'chelsea.npz')
  assert e.eigenvectors.shape == (5, *e.patch_grid) and e.patch_size == 16
  assert e.image_size == e.working_size == (300, 451)
  np.testing.assert_allclose(e.eigenvalues, ref['loc_eigenvalues'], atol=1e-4)
  fiedler = e.eigenvectors[1].reshape(-1)
  official = ref['loc_eigenvectors'][1]
  cos = abs(fiedler @ official) / np.linalg.norm(fiedler) / np.linalg.norm(official)
  assert cos > 0.999

  found = sj.discover(backbone, [PATHS[1]], max_objects=2)
  assert isinstance(found, list) and len(found) == 1
  objects = found[0]
  n = len(objects.masks)
  assert n <= 2 and objects.masks.shape[1:] == (300, 451) and objects.boxes.shape == (n, 4)
  for mask, box in zip(objects.masks, objects.boxes):
    ys, xs = np.nonzero(mask)
    assert list(box) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_background_removal_equals_cli_edit(backbone, tmp_path):
  from configs import edit as edit_config  # pylint: disable=import-outside-toplevel
  from spectral_jax.tasks import edit as edit_task  # pylint: disable=import-outside-toplevel

  config = edit_config.get_config()
  config.data.root = PATHS[1]  # a single image
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.edit.background = '#204080'
  config.output.num_panels = 0
  edit_task.run(config, tmp_path / 'cli')
  cutout = np.asarray(Image.open(tmp_path / 'cli' / 'cutout' / 'chelsea.png'))
  composite = np.asarray(Image.open(tmp_path / 'cli' / 'composite' / 'chelsea.png'))
  rgba = sj.remove_background(backbone, PATHS[1])
  assert rgba.shape == (300, 451, 4) and rgba.dtype == np.uint8
  assert 0 < (rgba[..., 3] > 127).mean() < 1
  np.testing.assert_array_equal(rgba, cutout)
  on_colour = sj.remove_background(backbone, Image.open(PATHS[1]), background=(32, 64, 128))
  assert on_colour.shape == (300, 451, 3) and on_colour.dtype == np.uint8
  np.testing.assert_array_equal(on_colour, composite)


def test_bad_inputs_are_named(backbone, tmp_path):
  rgb = np.zeros((64, 64, 3), np.uint8)
  cases = [
    ([rgb, rgb.astype(np.float32)], 'images[1]: dtype float32'),
    ([rgb, np.zeros((64, 64, 2), np.uint8)], 'images[1]: shape (64, 64, 2)'),
    ([rgb, rgb, str(tmp_path / 'missing.png')], 'images[2]: no such image file'),
    ([np.zeros((8, 64, 3), np.uint8)], 'images[0]: image is 64x8 pixels; the minimum side is 16'),
    ([rgb, 3], 'images[1]: a int'),
    ([rgb, str(tmp_path)], 'images[1]: ' + repr(str(tmp_path)) + ' is a folder'),
    ([], 'empty list'),
    (rgb.astype(np.int64), 'images: dtype int64'),
  ]
  for images, message in cases:
    with pytest.raises(ValueError, match=None) as info:
      sj.localize(backbone, images)
    assert message in str(info.value), (message, str(info.value))
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'not a png')
  with pytest.raises(ValueError, match=r'images\[1\]: .*bad.png'):
    sj.localize(backbone, [PATHS[0], str(bad)])
  # A lazily opened PIL image with truncated data decodes inside the call: named, ValueError.
  good = tmp_path / 'good.jpg'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
  (tmp_path / 'truncated.jpg').write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  with pytest.raises(ValueError, match=r'images\[1\]: unreadable PIL image'):
    sj.localize(backbone, [rgb, Image.open(tmp_path / 'truncated.jpg')])
  # An array the pipeline refuses is named as the item, not as the temporary file it became.
  with pytest.raises(ValueError) as info:
    sj.localize(backbone, [rgb, np.zeros((16, 16, 3), np.uint8)])
  assert str(info.value).startswith('images[1]: ') and 'spectral_jax_api_' not in str(info.value)
  with pytest.raises(ValueError, match="method='nonesuch'.*dsm"):
    sj.localize(backbone, rgb, method='nonesuch')
  with pytest.raises(ValueError, match='refine'):
    sj.segment(backbone, rgb, refine='sharpen')
  with pytest.raises(ValueError, match='K=1'):
    sj.eigenvectors(backbone, rgb, K=1)
  with pytest.raises(ValueError, match='precision'):
    sj.load_backbone('dino_vits16', precision='float16')
  with pytest.raises(ValueError, match='one image'):
    sj.remove_background(backbone, [rgb])
  with pytest.raises(FileNotFoundError, match='checkpoint'):
    sj.load_backbone('dino_vits16', checkpoint=tmp_path / 'none.pth')


def test_pixel_limit_is_the_backbones_and_named_as_such(backbone, tmp_path):
  """Files above Backbone.max_pixels are refused before decoding, with the API's own knob."""
  photo = tmp_path / 'photo.png'
  Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), np.uint8)).save(photo)
  small = dataclasses.replace(backbone, max_pixels=96 * 128 - 1)
  with pytest.raises(ValueError) as info:
    sj.localize(small, [str(photo)])
  assert 'images[0]' in str(info.value) and 'Backbone.max_pixels' in str(info.value)
  assert '--config' not in str(info.value)
  exact = dataclasses.replace(backbone, max_pixels=96 * 128)
  np.testing.assert_array_equal(
    sj.localize(exact, str(photo)).box_xyxy, sj.localize(backbone, str(photo)).box_xyxy
  )


def test_quickstart_example_runs(tmp_path):
  env = dict(
    os.environ,
    SPECTRAL_JAX_CHECKPOINT=str(PARITY / 'checkpoint.pth'),
    SPECTRAL_JAX_CACHE=str(tmp_path / 'cache'),
    PYTHONPATH=ROOT,
  )
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'examples', 'quickstart.py'),
      '--out',
      str(tmp_path / 'out'),
      PATHS[1],
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'box (192, 0, 448, 224)' in proc.stdout
  for name in ('panel.png', 'cutout.png', 'on_white.png'):
    assert (tmp_path / 'out' / name).exists()
  assert Image.open(tmp_path / 'out' / 'cutout.png').mode == 'RGBA'


def test_segment_methods_and_bilateral_equal_the_cli(tmp_path):
  """api.segment with TokenCut (+ bilateral solver) and LOST equals --mode=segment's masks."""
  import spectral_jax as sj  # pylint: disable=import-outside-toplevel
  from configs import folder  # pylint: disable=import-outside-toplevel
  from spectral_jax.tasks import segment as segment_task  # pylint: disable=import-outside-toplevel

  backbone = sj.load_backbone(
    'dino_vits16', checkpoint=str(PARITY / 'checkpoint.pth'), cache_dir=str(tmp_path / 'cache')
  )
  paths = [str(PARITY / 'images' / f'{i}.png') for i in ('chelsea', 'coffee')]
  for method, refine in (('tokencut', 'bilateral'), ('lost', 'none')):
    config = folder.get_config()
    config.data.root = str(PARITY / 'images')
    config.data.limit = 0
    config.model.checkpoint = str(PARITY / 'checkpoint.pth')
    config.model.cache_dir = str(tmp_path / 'cache')
    config.method = method
    config.segment.refine = refine
    out = tmp_path / f'{method}_{refine}'
    segment_task.run(config, out)
    masks = sj.segment(backbone, paths, method=method, refine=refine)
    for path, mask in zip(paths, masks):
      cli = np.asarray(Image.open(out / 'masks' / Path(path).name)) > 127
      assert mask.shape == cli.shape and np.array_equal(mask, cli), (method, path)


_WRITES: list = []
_AUDITING = [False]


def _audit(event, args):
  """Records every file opened for writing while ``_AUDITING[0]`` (hooks cannot be removed)."""
  if not _AUDITING[0] or event != 'open':
    return
  path, mode, flags = (tuple(args) + (None, None, None))[:3]
  writes = (isinstance(mode, str) and any(c in mode for c in 'wax+')) or (
    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND)
  )
  if writes:
    _WRITES.append((path, mode, flags))


def test_in_memory_images_are_never_written_and_equal_their_files(backbone):
  """Arrays go to the pipeline as pixels: no file is opened for writing (an audit hook sees
  every open), and boxes, masks and cutouts equal those of the same images as PNG paths."""
  arrays = [np.asarray(Image.open(p).convert('RGB')) for p in PATHS]
  expected_boxes = [r.box_xyxy for r in sj.localize(backbone, PATHS)]
  expected_masks = sj.segment(backbone, PATHS)
  expected_cutout = sj.remove_background(backbone, PATHS[0])
  sj.localize(backbone, arrays)  # shapes compiled above: nothing below compiles or caches
  sys.addaudithook(_audit)
  _WRITES.clear()
  _AUDITING[0] = True
  try:
    boxes = [r.box_xyxy for r in sj.localize(backbone, arrays)]
    masks = sj.segment(backbone, arrays)
    cutout = sj.remove_background(backbone, arrays[0])
    pil_boxes = [r.box_xyxy for r in sj.localize(backbone, [Image.fromarray(a) for a in arrays])]
  finally:
    _AUDITING[0] = False
  assert _WRITES == [], _WRITES
  assert boxes == expected_boxes == pil_boxes
  for got, want in zip(masks, expected_masks):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(cutout, expected_cutout)


def test_the_audit_hook_sees_a_write(tmp_path):
  """The hook of the test above can fail: it records an ordinary file write."""
  sys.addaudithook(_audit)
  _WRITES.clear()
  _AUDITING[0] = True
  try:
    (tmp_path / 'x.txt').write_text('x')
  finally:
    _AUDITING[0] = False
  assert any(str(tmp_path / 'x.txt') == str(w[0]) for w in _WRITES)


def test_load_backbone_turns_the_persistent_compilation_cache_on(tmp_path):
  """A notebook gets the CLI's compile cache (<cache_dir>/xla) unless one is configured."""
  code = (
    'import jax, spectral_jax as sj\n'
    f'sj.load_backbone("dino_vits16", {str(PARITY / "checkpoint.pth")!r}, '
    f'cache_dir={str(tmp_path / "cache")!r})\n'
    'print(jax.config.jax_compilation_cache_dir)\n'
  )
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  proc = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / 'cache' / 'xla')


def test_unreachable_weights_name_the_api_parameter_and_the_cache(tmp_path):
  with pytest.raises(RuntimeError) as info:
    sj.load_backbone(
      'dino_vits16',
      'http://127.0.0.1:9/dino_deitsmall16_pretrain.pth',
      cache_dir=tmp_path / 'cache',
    )
  message = str(info.value)
  assert "checkpoint='/path/to/dino_deitsmall16_pretrain.pth'" in message
  assert str(tmp_path / 'cache') in message and '--config' not in message


def test_progress_reports_each_image_and_changes_nothing(backbone, capsys):
  calls = []
  boxes = sj.localize(backbone, PATHS, progress=lambda done, total: calls.append((done, total)))
  assert calls == [(1, 3), (2, 3), (3, 3)]
  assert [b.box_xyxy for b in boxes] == [b.box_xyxy for b in sj.localize(backbone, PATHS)]
  capsys.readouterr()
  sj.segment(backbone, PATHS[:2], progress=True)  # a bar on stderr, ending at its total
  assert '2/2' in capsys.readouterr().err
  seen = []
  many = [PATHS[1]] * 9  # more than one chunk of discover's bounded decoding
  objects = sj.discover(backbone, many, max_objects=1, progress=lambda d, t: seen.append(d))
  assert seen[-1] == 9 and seen == sorted(seen)
  single = sj.discover(backbone, PATHS[1], max_objects=1)
  for o in objects:
    np.testing.assert_array_equal(o.masks, single.masks)
  with pytest.raises(ValueError, match='progress='):
    sj.localize(backbone, PATHS[0], progress='yes')
