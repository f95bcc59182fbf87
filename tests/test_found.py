"""spectral/found.py and training/found.py against the official FOUND outputs (tests/data/found,
see its README): a 2-block DINO ViT-S/8, FOUND's shipped decoder (CUDA tensors) and a random one,
three photos. Every parity test compares with arrays or numbers recorded from the official code."""

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from spectral_jax import pipeline
from spectral_jax.models.weights import torch_pickle
from spectral_jax.spectral import found, tokencut
from spectral_jax.spectral import found_background
from spectral_jax.training import found as found_train

DATA = Path(__file__).parent / 'data' / 'found'
IMAGES = Path(__file__).parent / 'data' / 'parity' / 'images'  # the same photos (README)
IMAGE_SHA256 = {
  'astronaut': '2418889d0d83962d51facc3832b55cf1849690018a1e873d1c551146555cd02f',
  'chelsea': '9540e8d656047041ae92c8c19f8aeb2baa4ede5a17030470e8a1cfc7bb26182a',
  'coffee': '1b334876bab6bccddc821520b67fad5bceaaf3c454885b75cdc126b7ebfe9576',
}
MANIFEST = json.loads((DATA / 'manifest.json').read_text())
IDS = sorted(MANIFEST['images'])
DECODERS = sorted(MANIFEST['decoders'])  # 'found' (shipped, CUDA tensors), 'random'
THRESHOLDS = MANIFEST['training']['thresholds']  # [0.3, 0.4]
GRID = tuple(MANIFEST['training']['grid'])
AGREEMENT = 0.999
CASES = [(i, d) for i in IDS for d in DECODERS]


def _sha256(path):
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _ref(image_id):
  return np.load(DATA / f'{image_id}.npz')


def _image(image_id):
  return np.asarray(Image.open(IMAGES / f'{image_id}.png').convert('RGB'))


def _prefix(decoder):
  return MANIFEST['decoders'][decoder]['prefix']


def _info(image_id, decoder):
  return MANIFEST['images'][image_id][_prefix(decoder) + 'found']


def _th(th):
  return f'th{round(th * 100):03d}'


def _agreement(a, b):
  return float(np.mean(np.asarray(a, bool) == (np.asarray(b) > 0)))


@pytest.fixture(scope='module')
def extractor(weights_cache):
  # The CLI runs below read the same cache: the checkpoint is converted once.
  return pipeline.load_extractor(
    MANIFEST['model_name'], str(DATA / 'checkpoint.pth'), str(weights_cache)
  )


@pytest.fixture(scope='module')
def decoders():
  return {d: found.read_decoder(DATA / MANIFEST['decoders'][d]['file'], 384) for d in DECODERS}


@pytest.fixture(scope='module')
def logits(extractor, decoders):
  """Our logits [gh, gw] per (image, decoder): keys of the normalised, zero-padded photos
  (one batch, one compilation) through the decoder."""
  keys, grids = tokencut.padded_keys(extractor, [_image(i) for i in IDS])
  keys = np.asarray(keys)
  out = {}
  for b, image_id in enumerate(IDS):
    gh, gw = grids[b]
    assert [gh, gw] == MANIFEST['images'][image_id]['patch_grid']
    for d, (weight, bias) in decoders.items():
      out[image_id, d] = np.asarray(found.decoder_logits(keys[b, : gh * gw], weight, bias))
      out[image_id, d] = out[image_id, d].reshape(gh, gw)
  return out


@pytest.fixture(scope='module')
def train_features(extractor):
  """Our 224 × 224 training inputs (augmentation pinned to identity) and their last-block keys
  and CLS attention, one batch."""
  images = np.stack([found_background.train_image(_image(i)) for i in IDS])
  x = np.stack([found_background.train_input(im) for im in images])
  keys, att = found_background.keys_and_cls_attention(extractor, x)
  return dict(images=images, x=x, keys=np.asarray(keys), attention=np.asarray(att))


# ----------------------------------------------------------------------------------------------
# The fixture and the decoder file
# ----------------------------------------------------------------------------------------------


def test_fixture_is_the_reference():
  assert _sha256(DATA / MANIFEST['checkpoint']) == MANIFEST['checkpoint_sha256']
  for d in DECODERS:
    assert _sha256(DATA / MANIFEST['decoders'][d]['file']) == MANIFEST['decoders'][d]['sha256']
  for image_id in IDS:
    assert _sha256(IMAGES / f'{image_id}.png') == IMAGE_SHA256[image_id]


@pytest.mark.parametrize('decoder', DECODERS)
def test_read_decoder_matches_manifest(decoder):
  entry = MANIFEST['decoders'][decoder]
  weight, bias = found.read_decoder(DATA / entry['file'])
  assert weight.shape == (384,) and weight.dtype == np.float32
  assert isinstance(bias, np.float32) and bias == np.float32(entry['bias'])
  np.testing.assert_allclose(np.linalg.norm(weight), entry['weight_norm'], rtol=1e-6)


def test_shipped_decoder_holds_cuda_tensors():
  raw = zipfile.ZipFile(DATA / 'decoder_found.pt').read('archive/data.pkl')
  assert b'cuda:0' in raw  # the reader maps them like CPU tensors (test above)


def _bad_files(tmp_path):
  garbage = tmp_path / 'garbage.pt'
  garbage.write_bytes(b'this is not a torch file at all')
  truncated = tmp_path / 'truncated.pt'
  truncated.write_bytes((DATA / 'decoder_found.pt').read_bytes()[:1500])
  wrong_shape = found_train.write_torch_zip(
    tmp_path / 'two_outputs.pt',
    {'decoder': {'weight': np.zeros((2, 384, 1, 1)), 'bias': np.zeros(2)}},
  )
  no_bias = found_train.write_torch_zip(
    tmp_path / 'no_bias.pt', {'decoder': {'weight': np.zeros((1, 384, 1, 1))}}
  )
  return {
    garbage: 'not a readable PyTorch file',
    truncated: 'not a readable PyTorch file',
    DATA / 'checkpoint.pth': "no 'decoder' entry",  # a ViT checkpoint, not a decoder
    wrong_shape: "'decoder' holds",
    no_bias: "'decoder' holds",
    tmp_path / 'missing.pt': 'no such file',
  }


def test_wrong_decoder_files_raise_the_typed_error(tmp_path):
  for path, reason in _bad_files(tmp_path).items():
    with pytest.raises(found.DecoderFileError) as e:
      found.read_decoder(path)
    assert isinstance(e.value, ValueError)
    assert e.value.path == str(path) and str(path) in str(e.value), str(e.value)
    assert reason in str(e.value) and 'decoder_weights.pt' in str(e.value), str(e.value)
  with pytest.raises(found.DecoderFileError, match='reads 384 features.*gives 768'):
    found.read_decoder(DATA / 'decoder_found.pt', dim=768)


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('image_id,decoder', CASES)
def test_logits_match_official(logits, image_id, decoder):
  ref = _ref(image_id)[_prefix(decoder) + 'logits']
  assert logits[image_id, decoder].shape == ref.shape
  np.testing.assert_allclose(logits[image_id, decoder], ref, rtol=0, atol=2e-4)


@pytest.mark.parametrize('image_id,decoder', CASES)
def test_masks_match_official(logits, image_id, decoder):
  """Both modes × refine none / bilateral from our logits (``found.prediction``)."""
  ref, info, pre = _ref(image_id), _info(image_id, decoder), _prefix(decoder)
  image = _image(image_id)
  for mode in found.MODES:
    plain = found.prediction(logits[image_id, decoder], image, mode, 'none')
    assert plain['mask'].shape == image.shape[:2] and plain['mask'].dtype == bool
    assert _agreement(plain['mask'], ref[f'{pre}mask_{mode}']) >= AGREEMENT, mode
    assert _agreement(plain['multi'], ref[f'{pre}mask_multi']) >= AGREEMENT
    assert 0.5 < plain['score'] <= 1.0
    bs = found.prediction(logits[image_id, decoder], image, mode, 'bilateral')
    assert _agreement(bs['mask'], ref[f'{pre}bs_mask_{mode}']) >= AGREEMENT, mode
    assert bs['bs_used'] == bool(info[f'bs_used_{mode}']), mode
    np.testing.assert_allclose(bs['bs_iou'], info[f'bs_iou_{mode}'], atol=1e-4)


@pytest.mark.parametrize('image_id,decoder', CASES)
def test_steps_on_official_inputs(image_id, decoder):
  """Each step from the official previous step: upsampling of the official logits, the
  single-mode component of the official multi mask, and the solver + post-processing + gate
  of the official multi mask (one solve for both modes)."""
  ref, info, pre = _ref(image_id), _info(image_id, decoder), _prefix(decoder)
  image = _image(image_id)
  multi = ref[f'{pre}mask_multi'] > 0
  up = found.upsample_logits(ref[f'{pre}logits'], image.shape[:2], 8)
  assert up.shape == image.shape[:2] and up.dtype == jnp.float32
  assert _agreement(found.multi_mask(up), ref[f'{pre}mask_multi']) >= 0.9999
  np.testing.assert_array_equal(found.single_mask(multi), ref[f'{pre}mask_single'] > 0)
  output = None
  for mode in found.MODES:
    r = found.refine(image, multi, mode, output=output)
    output = r['output']
    assert _agreement(r['binary'], ref[f'{pre}bs_binary_{mode}']) >= AGREEMENT, mode
    assert r['used'] == bool(info[f'bs_used_{mode}']), mode
    np.testing.assert_allclose(r['iou'], info[f'bs_iou_{mode}'], atol=1e-4)
    assert _agreement(r['mask'], ref[f'{pre}bs_mask_{mode}']) >= AGREEMENT, mode


@pytest.mark.parametrize('image_id,decoder', CASES)
def test_discovery_boxes_match_official(logits, image_id, decoder):
  ref, info, pre = _ref(image_id), _info(image_id, decoder), _prefix(decoder)
  hw = ref[f'{pre}mask_multi'].shape
  np.testing.assert_array_equal(found.multi_mask(logits[image_id, decoder]), ref[f'{pre}uod_mask'])
  box = found.discovery_box(logits[image_id, decoder], hw, 8)
  assert box.dtype == np.int64
  np.testing.assert_array_equal(box, ref[f'{pre}uod_box_xyxy'])
  np.testing.assert_array_equal(box, info['uod_box_xyxy'])
  official = found.discovery_box(ref[f'{pre}logits'], hw, 8)
  np.testing.assert_array_equal(official, info['uod_box_xyxy'])


def test_upsampling_is_torch_bilinear_and_jits():
  # torch: F.interpolate([[0, 8]], scale_factor=2, mode='bilinear', align_corners=False):
  # sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last pixel, weight 0.25 on itself).
  want = np.array([[0, 2, 6, 8], [0, 2, 6, 8]], np.float32)
  np.testing.assert_array_equal(found.upsample_logits(np.array([[0.0, 8.0]]), (2, 4), 2), want)
  cropped = found.upsample_logits(np.array([[0.0, 8.0]]), (1, 3), 2)
  np.testing.assert_array_equal(cropped, want[:1, :3])
  crop = jax.jit(lambda x: found.upsample_logits(x, (3, 5), 4))(jnp.arange(6.0).reshape(2, 3))
  assert crop.shape == (3, 5)


def test_single_mask_component_rule():
  # Two components of 3 pixels and one of 2. The official takes the LAST label of the
  # ascending np.argsort (stable for <= 16 labels): among equal sizes the highest label,
  # i.e. the last in raster order of first pixels.
  mask = np.zeros((5, 7), bool)
  mask[0, 4:7] = True  # label 1
  mask[2, 0:3] = True  # label 2
  mask[4, 5:7] = True  # label 3
  want = np.zeros_like(mask)
  want[2, 0:3] = True
  np.testing.assert_array_equal(found.single_mask(mask), want)
  mask[0, 3] = True  # label 1 grows to 4 pixels and wins
  want = np.zeros_like(mask)
  want[0, 3:7] = True
  np.testing.assert_array_equal(found.single_mask(mask), want)
  full, empty = np.ones((4, 4), bool), np.zeros((4, 4), bool)
  np.testing.assert_array_equal(found.single_mask(full), full)  # label 0 is the empty one
  np.testing.assert_array_equal(found.single_mask(empty), empty)


def test_bilateral_postprocess_quirks():
  output = np.ones((10, 10))
  output[:2, :2] = 0.0  # background: 4 pixels in a corner, the object has 96
  output[5, 5] = 0.0  # a hole in the object: filled
  background = output < 0.5
  background[5, 5] = False
  # multi: every label but the largest, which is the object here: the background is kept.
  np.testing.assert_array_equal(found.bilateral_postprocess(output, 'multi'), background)
  # single: the second-largest label, i.e. the background label 0 here.
  np.testing.assert_array_equal(found.bilateral_postprocess(output, 'single'), background)
  nothing = np.zeros((6, 6))
  assert found.bilateral_postprocess(nothing, 'single').all()  # official except: all ones
  assert not found.bilateral_postprocess(nothing, 'multi').any()
  assert np.isnan(found.mask_iou(nothing, nothing))  # → the gate never passes
  with pytest.raises(ValueError, match='single'):
    found.bilateral_postprocess(output, 'all')


def test_mask_score_is_the_mean_probability_inside():
  up = np.array([[0.0, np.log(3.0)], [-5.0, 2.0]], np.float32)
  mask = np.array([[True, True], [False, False]])
  np.testing.assert_allclose(found.mask_score(up, mask), (0.5 + 0.75) / 2, rtol=1e-6)
  assert found.mask_score(up, np.zeros_like(mask)) == 0.0


# ----------------------------------------------------------------------------------------------
# Training targets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('image_id', IDS)
def test_training_input_and_solver_reference(train_features, image_id):
  ref, info = _ref(image_id), MANIFEST['images'][image_id]['training']
  b = IDS.index(image_id)
  np.testing.assert_array_equal(train_features['images'][b], ref['train_image'])
  reference = found_background.unnormalised_reference(train_features['x'][b])
  np.testing.assert_array_equal(reference, ref['train_bs_reference'])
  differing = int((reference != ref['train_image']).any(-1).sum())
  assert differing == info['bs_reference_pixels_differing']


@pytest.mark.parametrize('image_id', IDS)
def test_background_on_official_features(image_id):
  ref = _ref(image_id)
  bg = found_background.background(ref['train_cls_attention'], ref['train_k'].astype(np.float32))
  assert bg['seed'] == int(ref['bkg_seed']) == MANIFEST['images'][image_id]['training']['bkg_seed']
  np.testing.assert_array_equal(bg['Q'], ref['bkg_Q'])
  np.testing.assert_allclose(bg['beta'], ref['bkg_beta'], rtol=0, atol=1e-6)
  # train_k is stored as float16; the official similarity used the float32 keys.
  np.testing.assert_allclose(bg['similarity'], ref['bkg_similarity'], rtol=0, atol=2e-4)
  for th in THRESHOLDS:
    bg = found_background.background(
      ref['train_cls_attention'], ref['train_k'].astype(np.float32), th
    )
    np.testing.assert_array_equal(bg['background'].reshape(GRID), ref[f'bkg_mask_{_th(th)}'])


@pytest.mark.parametrize('image_id', IDS)
def test_background_and_pseudo_masks_end_to_end(train_features, image_id):
  ref, info = _ref(image_id), MANIFEST['images'][image_id]['training']
  b = IDS.index(image_id)
  keys, att = train_features['keys'][b], train_features['attention'][b]
  np.testing.assert_allclose(keys, ref['train_k'].astype(np.float32), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(att, ref['train_cls_attention'], rtol=0, atol=1e-6)
  bg = found_background.background(att, keys)
  assert bg['seed'] == info['bkg_seed']
  np.testing.assert_allclose(bg['beta'], info['beta'], rtol=0, atol=1e-6)
  reference = found_background.unnormalised_reference(train_features['x'][b])
  for th in THRESHOLDS:
    name, expected = _th(th), info[_th(th)]
    bkg = found_background.background(att, keys, th)['background'].reshape(GRID)
    np.testing.assert_array_equal(bkg, ref[f'bkg_mask_{name}'])
    p = found_background.pseudo_mask(reference, ~bkg)
    np.testing.assert_array_equal(p['target'], ref[f'pseudo_target_{name}'])
    assert _agreement(p['binary'], ref[f'pseudo_bs_binary_{name}']) >= AGREEMENT, name
    assert p['used'] == bool(expected['use_bs']), name
    np.testing.assert_allclose(p['iou'], expected['iou'], atol=1e-4)
    assert p['mask'].shape == GRID
    np.testing.assert_array_equal(p['mask'], ref[f'pseudo_mask_{name}'] > 0)  # 28 × 28 target


def test_resize_rules_cv2_and_torch():
  # cv2.resize(np.float32([[0, 1], [2, 3]]), (4, 4)) (INTER_LINEAR): borders repeated.
  want = np.array(
    [[0, 0.25, 0.75, 1], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]],
    np.float32,
  )
  np.testing.assert_array_equal(
    found_background.resize_bilinear(np.float32([[0, 1], [2, 3]]), (4, 4)), want
  )
  # torch 224 → 28 then bool(): cell (i, j) reads pixels 8i+3, 8i+4 (rows and columns).
  for y, x, hit in (
    (8 * 5 + 3, 8 * 7 + 4, True),
    (8 * 5 + 4, 8 * 7 + 3, True),
    (8 * 5 + 2, 8 * 7 + 3, False),
    (8 * 5 + 3, 8 * 7 + 5, False),
  ):
    mask = np.zeros((224, 224), np.float32)
    mask[y, x] = 1.0
    down = found_background.downsample_any(mask, (28, 28))
    assert down.sum() == hit and (down[5, 7] if hit else True), (y, x)


def test_train_image_draws():
  rng = np.random.default_rng(0)
  draws = [found_background.draw_augmentation(rng) for _ in range(200)]
  scales = np.array([d['scale'] for d in draws])
  sigmas = np.array([d['blur_sigma'] for d in draws if d['blur_sigma'] is not None])
  assert 0.1 <= scales.min() and scales.max() <= 3.0 and 60 < len(sigmas) < 140
  assert 0.1 <= sigmas.min() and sigmas.max() <= 2.0
  photo = _image('chelsea')  # 451 × 300: the shorter edge becomes 224, then 224 × 224
  scaled = found_background.train_image(photo, scale=0.5, blur_sigma=1.5)
  assert scaled.shape == (224, 224, 3) and scaled.dtype == np.uint8
  assert not np.array_equal(scaled, found_background.train_image(photo))
  flat = np.full((30, 30, 3), 77, np.uint8)  # a blur keeps a flat image
  np.testing.assert_array_equal(found_background.gaussian_blur(flat, 23, 2.0), flat)


# ----------------------------------------------------------------------------------------------
# Training pieces
# ----------------------------------------------------------------------------------------------


def test_save_head_round_trip_in_the_official_format(tmp_path):
  head = found_train.init_head(jax.random.PRNGKey(3), 384)
  path = found_train.save_head(tmp_path / 'decoder_weights_niter500.pt', head)
  back = found_train.load_head(path, 384)
  np.testing.assert_array_equal(back['weight'], head['weight'])
  assert back['bias'] == head['bias']
  mine = torch_pickle.read_pth(path, legacy=False)
  official = torch_pickle.read_pth(DATA / 'decoder_found.pt', legacy=False)
  shapes = lambda tree: {k: {n: v.shape for n, v in d.items()} for k, d in tree.items()}
  assert shapes(mine) == shapes(official)  # {'decoder': {'weight': (1, 384, 1, 1), 'bias': (1,)}}
  with zipfile.ZipFile(path) as zf, open(path, 'rb') as f:
    names = zf.namelist()
    assert {'archive/data.pkl', 'archive/version', 'archive/byteorder'} <= set(names)
    for info in zf.infolist():  # stored, data 64-byte aligned as torch writes records
      assert info.compress_type == zipfile.ZIP_STORED
      f.seek(info.header_offset + 26)
      name_len, extra_len = struct.unpack('<HH', f.read(4))
      assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def _torch_adamw(params, grads, lr0, step_size, gamma, wd, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.AdamW + StepLR as their documentation writes them, in float64."""
  p, m, v, out = params.astype(np.float64), 0.0, 0.0, []
  for t, g in enumerate(grads, start=1):
    lr = lr0 * gamma ** ((t - 1) // step_size)
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
    out.append(p)
  return out


def test_optimizer_is_torch_adamw_with_step_lr():
  rng = np.random.default_rng(1)
  params = rng.normal(size=5).astype(np.float32)
  grads = [rng.normal(size=5).astype(np.float32) for _ in range(6)]
  tx = found_train.optimizer(0.05, step_size=2, gamma=0.5, weight_decay=0.01)
  state, p = tx.init(jnp.asarray(params)), jnp.asarray(params)
  for want, g in zip(_torch_adamw(params, grads, 0.05, 2, 0.5, 0.01), grads):
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = p + updates
    np.testing.assert_allclose(p, want, rtol=0, atol=5e-6)  # float32 vs float64
  lr = found_train.learning_rate()
  want = [0.05, 0.05, 0.0475, 0.05 * 0.95**9]
  np.testing.assert_allclose([lr(0), lr(49), lr(50), lr(499)], want, rtol=1e-6)


def _bce(logits, targets):
  """torch BCEWithLogitsLoss: mean of max(x, 0) − x·t + log(1 + exp(−|x|))."""
  x = logits.astype(np.float64)
  return np.mean(np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x))))


def test_targets_loss_and_step_on_official_features():
  refs = [_ref(i) for i in IDS]
  keys = np.stack([r['train_k'].astype(np.float32) for r in refs])
  att = np.stack([r['train_cls_attention'] for r in refs])
  references = np.stack([r['train_bs_reference'] for r in refs])
  bkg = found_train.background_targets(references, att, keys, GRID)
  want = np.stack([r['pseudo_mask_th030'].reshape(-1) > 0 for r in refs])
  np.testing.assert_array_equal(bkg, want)  # the official training targets (bkg_th 0.3)

  weight, bias = found.read_decoder(DATA / 'decoder_random.pt')
  head = {'weight': jnp.asarray(weight), 'bias': jnp.asarray(bias)}
  logits = keys @ weight + bias
  own = logits > 0
  bs, second, w = found_train.iteration_targets(head, keys, references, GRID, 0, bkg)
  assert w == 1.0 and bs.shape == second.shape == (3, 784)
  np.testing.assert_array_equal(second, bkg)
  for b in range(3):  # the own prediction refined by the pseudo-mask procedure
    p = found_background.pseudo_mask(references[b], own[b].reshape(GRID))
    np.testing.assert_array_equal(bs[b], p['mask'].reshape(-1))
  bs_late, second_late, w_late = found_train.iteration_targets(head, keys, references, GRID, 100)
  np.testing.assert_array_equal(bs_late, bs)
  np.testing.assert_array_equal(second_late, own)
  assert w_late == 4.0
  with pytest.raises(ValueError, match='bkg_targets'):
    found_train.iteration_targets(head, keys, references, GRID, 99)

  want_loss = 1.5 * _bce(logits, bs) + _bce(logits, bkg)
  loss = found_train.loss_fn(head, keys, bs, bkg, 1.0)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  tx = found_train.optimizer()
  step = found_train.make_train_step(tx)
  state = tx.init(head)
  new, state, first = step(head, state, keys, bs, bkg, 1.0)
  np.testing.assert_allclose(first, want_loss, rtol=1e-5)
  assert new['weight'].shape == (384,) and new['bias'].shape == ()
  # The gradient by hand (d BCE / d logit = (sigmoid − t) / n) and torch AdamW's first step.
  x = logits.astype(np.float64)
  sig = 1 / (1 + np.exp(-x))
  dlogit = (1.5 * (sig - bs) + (sig - bkg)) / x.size
  grad_w = np.einsum('bn,bnd->d', dlogit, keys.astype(np.float64))
  for name, p, g in (('weight', weight, grad_w), ('bias', bias, dlogit.sum())):
    want = _torch_adamw(np.asarray(p), [g], 0.05, 50, 0.95, 0.01)[0]
    np.testing.assert_allclose(new[name], want, rtol=0, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------------------------
# --config.method=found: the CLI runners, the Python API, the workdir record
# ----------------------------------------------------------------------------------------------

# (decoder, evaluation_mode, refine) → the official array. Half of the eight run through the
# CLI's segment runner, the other half through the API (one extractor): every array of both
# decoders is checked once, and the solver gate passes on coffee with `random` in both halves.
# The runs read chelsea and coffee only (the library's masks and boxes of all three photos are
# checked above; astronaut's 4096 patches would double the forward time).
SMALL = ['chelsea', 'coffee']
CLI_MASKS = [
  ('found', 'single', 'none'),
  ('found', 'multi', 'bilateral'),
  ('random', 'multi', 'none'),
  ('random', 'single', 'bilateral'),
]
API_MASKS = [
  ('found', 'multi', 'none'),
  ('found', 'single', 'bilateral'),
  ('random', 'single', 'none'),
  ('random', 'multi', 'bilateral'),
]


def _mask_key(decoder, mode, refine):
  return _prefix(decoder) + ('bs_' if refine == 'bilateral' else '') + f'mask_{mode}'


@pytest.fixture(scope='module')
def weights_cache(tmp_path_factory):
  """One weights cache for the CLI runs (the checkpoint is converted once), holding the
  official decoder under its download name: decoder '' resolves without the network."""
  folder = tmp_path_factory.mktemp('cache')
  (folder / 'decoder_weights.pt').write_bytes((DATA / 'decoder_found.pt').read_bytes())
  return folder


@pytest.fixture(scope='module')
def small_images(tmp_path_factory):
  folder = tmp_path_factory.mktemp('small')
  for image_id in SMALL:
    (folder / f'{image_id}.png').write_bytes((IMAGES / f'{image_id}.png').read_bytes())
  return folder


def _config(weights_cache, decoder='random', images=IMAGES, **found_settings):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config('found')
  config.data.root = str(images)
  config.model.checkpoint = str(DATA / 'checkpoint.pth')
  config.model.cache_dir = str(weights_cache)
  # 'found': the official decoder through the registry (the cache's copy), not a path.
  config.found.decoder = '' if decoder == 'found' else str(DATA / 'decoder_random.pt')
  config.output.num_panels = 1
  for key, value in found_settings.items():
    config.found[key] = value
  return config


def test_config_argument_found():
  from configs import object_seg, voc  # pylint: disable=import-outside-toplevel
  from spectral_jax.models.weights import downloads

  for module in (voc, object_seg):
    config = module.get_config('found')
    assert config.method == 'found' and config.model.name == 'dino_vits8'
    assert config.model.checkpoint == downloads.VARIANT_WEIGHTS['dino_vits8_300ep']
  assert not object_seg.get_config('found').segment.crf  # FOUND's protocol: refine none
  url, size, sha256 = downloads.FILES['found_decoder']  # the shipped file is the fixture's
  assert url.endswith('/data/weights/decoder_weights.pt') and url.startswith('https://github')
  shipped = DATA / 'decoder_found.pt'
  assert (size, sha256) == (shipped.stat().st_size, _sha256(shipped))


@pytest.mark.parametrize('decoder', DECODERS)
def test_cli_localize_boxes_equal_official(weights_cache, small_images, tmp_path, decoder):
  from spectral_jax import artifacts
  from spectral_jax.tasks import localize

  localize.run(_config(weights_cache, decoder, small_images), tmp_path / 'out')
  preds = {r['id']: r for r in artifacts.read_jsonl(tmp_path / 'out' / 'predictions.jsonl')}
  scores = {r['id']: r['score'] for r in artifacts.read_jsonl(tmp_path / 'out' / 'scores.jsonl')}
  assert sorted(preds) == SMALL
  for image_id in SMALL:
    info = MANIFEST['images'][image_id]
    assert preds[image_id]['box_xyxy'] == _info(image_id, decoder)['uod_box_xyxy'], image_id
    assert preds[image_id]['image_size'] == [info['height'], info['width']]
    assert 0.5 < scores[image_id] <= 1.0  # the mean probability of the box's component
  assert (tmp_path / 'out' / 'panels' / f'{SMALL[0]}.png').exists()


@pytest.mark.parametrize('decoder,mode,refine', CLI_MASKS)
def test_cli_segment_masks_equal_official(
  weights_cache, small_images, tmp_path, decoder, mode, refine
):
  from spectral_jax import artifacts
  from spectral_jax.tasks import segment

  config = _config(weights_cache, decoder, small_images, evaluation_mode=mode)
  config.segment.refine = refine
  segment.run(config, tmp_path / 'out')
  records = artifacts.read_jsonl(tmp_path / 'out' / 'mask_scores.jsonl')
  scores = {r['id']: r['score'] for r in records}
  assert sorted(scores) == SMALL
  for image_id in SMALL:
    ours = np.asarray(Image.open(tmp_path / 'out' / 'masks' / f'{image_id}.png'))
    ref = _ref(image_id)[_mask_key(decoder, mode, refine)]
    assert ours.shape == ref.shape and set(np.unique(ours)) <= {0, 255}
    assert _agreement(ours > 127, ref) >= AGREEMENT, image_id
    assert 0.5 < scores[image_id] <= 1.0, image_id


def test_api_masks_and_boxes_equal_official(extractor):
  import spectral_jax as sj  # pylint: disable=import-outside-toplevel

  backbone = sj.Backbone(MANIFEST['model_name'], extractor)
  images = [_image(i) for i in SMALL]
  decoder_file = {d: DATA / MANIFEST['decoders'][d]['file'] for d in DECODERS}
  for decoder, mode, refine in API_MASKS:
    masks = sj.segment(
      backbone,
      images,
      method='found',
      refine=refine,
      evaluation_mode=mode,
      decoder=decoder_file[decoder],
    )
    for image, image_id, mask in zip(images, SMALL, masks):
      assert mask.dtype == bool and mask.shape == image.shape[:2]
      ref = _ref(image_id)[_mask_key(decoder, mode, refine)]
      assert _agreement(mask, ref) >= AGREEMENT, (image_id, decoder, mode, refine)
  one = sj.localize(backbone, images[0], method='found', decoder=str(decoder_file['random']))
  assert list(one.box_xyxy) == _info(SMALL[0], 'random')['uod_box_xyxy']
  assert 0.5 < one.score <= 1.0


def _garbage(tmp_path):
  path = tmp_path / 'garbage.pt'
  path.write_bytes(b'this is not a torch file at all')
  return path


def test_bad_decoder_and_backbone_errors_name_the_parameter(extractor, tmp_path):
  import types  # pylint: disable=import-outside-toplevel

  import spectral_jax as sj  # pylint: disable=import-outside-toplevel
  from spectral_jax.errors import SettingError
  from spectral_jax.tasks import common, localize

  image = _image('chelsea')
  backbone = sj.Backbone(MANIFEST['model_name'], extractor)
  for bad, reason in (
    (_garbage(tmp_path), 'not a readable PyTorch file'),
    (tmp_path / 'missing.pt', 'no such file'),
    (DATA / 'checkpoint.pth', "no 'decoder' entry"),
  ):
    with pytest.raises(ValueError) as e:
      sj.localize(backbone, image, method='found', decoder=bad)
    assert str(e.value).startswith(f'decoder={str(bad)!r}: ') and reason in str(e.value)
    assert 'decoder_weights.pt' in str(e.value)  # says what a decoder file is
    config = _config(tmp_path / 'cache')
    config.found.decoder = str(bad)
    with pytest.raises(SettingError) as e:
      localize.run(config, tmp_path / 'out')
    assert e.value.key == 'found.decoder' and isinstance(e.value.__cause__, found.DecoderFileError)
    assert common.user_message(e.value).startswith(f'--config.found.decoder={str(bad)!r}: ')
  assert not (tmp_path / 'out' / 'predictions.jsonl').exists()  # refused before any image
  with pytest.raises(ValueError, match="evaluation_mode='all': use one of"):
    sj.segment(backbone, image, method='found', evaluation_mode='all')
  with pytest.raises(ValueError, match="FOUND's: pass method='found'"):
    sj.segment(backbone, image, method='dsm', decoder=DATA / 'decoder_found.pt')
  # Another backbone (patch 16): refused by name before any image runs.
  arch = types.SimpleNamespace(patch_size=16, embed_dim=384)
  other = sj.Backbone('dino_vits16', types.SimpleNamespace(arch=arch, name='dino_vits16'))
  with pytest.raises(ValueError, match=r"^load_backbone\(name=\.\.\.\)='dino_vits16': FOUND"):
    sj.localize(other, image, method='found', decoder=DATA / 'decoder_found.pt')
  with pytest.raises(SettingError, match='patch 8, width 384') as e:
    pipeline.METHODS['found'].check(other.extractor)
  assert e.value.key == 'model.name'


def test_official_decoder_offline_names_the_setting(tmp_path, monkeypatch):
  import urllib.error  # pylint: disable=import-outside-toplevel
  import urllib.request  # pylint: disable=import-outside-toplevel

  from spectral_jax.errors import SettingError
  from spectral_jax.results import boxes

  def offline(*args, **kwargs):
    raise urllib.error.URLError('no network here')

  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(SettingError) as e:
    boxes.found_params('', str(tmp_path / 'empty_cache'))
  assert e.value.key == 'found.decoder'
  assert 'decoder_weights.pt' in e.value.reason and str(tmp_path / 'empty_cache') in e.value.reason
  from spectral_jax.tasks import common  # pylint: disable=import-outside-toplevel

  assert common.user_message(e.value).startswith("--config.found.decoder=''")  # the CLI's words
  # A cached copy (size and sha256 checked) needs no network: the registry's file.
  cached = tmp_path / 'cache' / 'decoder_weights.pt'
  cached.parent.mkdir()
  cached.write_bytes((DATA / 'decoder_found.pt').read_bytes())
  assert boxes.found_params('', str(cached.parent)) == boxes.found_params(
    str(DATA / 'decoder_found.pt')
  )


def test_workdir_record_names_the_decoder_by_content(weights_cache, small_images, tmp_path):
  from spectral_jax import workdirs
  from spectral_jax.tasks import common, localize

  official = _config(weights_cache, 'found')
  copy = tmp_path / 'my_copy.pt'
  copy.write_bytes((DATA / 'decoder_found.pt').read_bytes())
  same = _config(weights_cache, 'found')
  same.found.decoder = str(copy)
  for stage in ('localize', 'segment'):
    record = common.stage_settings(official, stage)['found']
    assert record['decoder'] == {'sha256': MANIFEST['decoders']['found']['sha256']}
    assert common.stage_settings(same, stage)['found'] == record  # '' = the shipped file
  single = _config(weights_cache, 'found', evaluation_mode='single')
  assert common.stage_settings(single, 'localize') == common.stage_settings(official, 'localize')
  assert common.stage_settings(single, 'segment') != common.stage_settings(official, 'segment')
  dsm = _config(weights_cache, 'found')
  dsm.method = 'dsm'
  assert 'found' not in common.stage_settings(dsm, 'localize')  # no record for other methods
  # A rerun with another decoder stops (outputs exist), naming the setting.
  config = _config(weights_cache, 'random', small_images)
  config.data.limit = 1
  localize.run(config, tmp_path / 'out')
  with pytest.raises(workdirs.WorkdirError, match='found.decoder.sha256'):
    localize.run(_config(weights_cache, 'found', small_images), tmp_path / 'out')


def test_server_found_with_the_official_decoder(extractor, weights_cache):
  """/api/localize and /api/segment with method=found: FOUND's shipped decoder (here the
  cache's copy) gives the official box and multi mask; a decoder path is refused (it would
  read the server's files)."""
  import io  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  import urllib.error  # pylint: disable=import-outside-toplevel
  import urllib.request  # pylint: disable=import-outside-toplevel

  import spectral_jax as sj  # pylint: disable=import-outside-toplevel
  from spectral_jax.server import app

  def post(url):
    data = (IMAGES / 'chelsea.png').read_bytes()
    req = urllib.request.Request(url, data=data, headers={'Content-Type': 'image/png'})
    try:
      with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read()
    except urllib.error.HTTPError as e:
      return e.code, e.read()

  backbone = sj.Backbone(MANIFEST['model_name'], extractor, cache_dir=str(weights_cache))
  server = app.Server(backbone, '127.0.0.1', 0)
  threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True).start()
  try:
    assert 'found' in server.health()['methods'] and 'found' in server.health()['segment_methods']
    status, body = post(server.url + '/api/localize?method=found')
    assert status == 200, body
    assert json.loads(body)['box_xyxy'] == _info('chelsea', 'found')['uod_box_xyxy']
    status, body = post(server.url + '/api/segment?method=found')
    assert status == 200, body
    mask = np.asarray(Image.open(io.BytesIO(body)))
    assert _agreement(mask > 127, _ref('chelsea')['mask_multi']) >= AGREEMENT
    query = f'?method=found&decoder={DATA}/decoder_random.pt'
    status, body = post(server.url + '/api/segment' + query)
    assert status == 400 and 'decoder' in json.loads(body)['error'], body
  finally:
    server.shutdown()
    server.server_close()


def test_downscaled_images_give_found_outputs_in_the_original_frame(extractor):
  """Above data.max_tokens: FOUND on the downscaled image (the oracle: the library's steps on
  the keys of that image), its box scaled and its mask resized to the original frame."""
  import spectral_jax as sj  # pylint: disable=import-outside-toplevel

  backbone = sj.Backbone(MANIFEST['model_name'], extractor, max_tokens=200)
  image = _image('coffee')  # 75 × 50 patches at full size
  decoder = DATA / 'decoder_random.pt'
  small = pipeline.fit_tokens(image, 8, 200)
  assert small.shape[:2] != image.shape[:2]
  keys, grids = tokencut.padded_keys(extractor, [small])
  ((gh, gw),) = grids
  weight, bias = found.read_decoder(decoder)
  logits = np.asarray(found.decoder_logits(np.asarray(keys)[0, : gh * gw], weight, bias))
  logits = logits.reshape(gh, gw)
  r = sj.localize(backbone, image, method='found', decoder=decoder)
  box = found.discovery_box(logits, small.shape[:2])
  box = pipeline.scale_box(box, small.shape[:2], image.shape[:2])
  assert list(r.box_xyxy) == box.tolist() and r.image_size == image.shape[:2]
  for refine in ('none', 'bilateral'):
    mask = sj.segment(backbone, image, method='found', refine=refine, decoder=decoder)
    want = found.prediction(logits, small, 'multi', refine)['mask']
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert _agreement(mask, pipeline.resize_mask(want, image.shape[:2])) >= AGREEMENT, refine
