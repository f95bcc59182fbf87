"""Tests for spectral_jax.data.decode: every odd image kind, generated with PIL in tmp_path."""

import io

import numpy as np
import pytest
from absl import logging as absl_logging
from PIL import Image

from spectral_jax import errors
from spectral_jax.data import decode


@pytest.fixture
def logged(monkeypatch):
  """Captures absl info/warning lines emitted by decode."""
  lines = []
  monkeypatch.setattr(decode.logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  monkeypatch.setattr(decode.logging, 'warning', lambda fmt, *a: lines.append(fmt % a))
  return lines


def _save(img, path, **kw):
  img.save(path, **kw)
  return path


def test_rgb_png_roundtrip_no_log(tmp_path, logged):
  a = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  p = _save(Image.fromarray(a), tmp_path / 'x.png')
  out = decode.load_rgb(p)
  assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
  np.testing.assert_array_equal(out, a)
  assert logged == []


def test_grayscale(tmp_path, logged):
  a = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
  out = decode.load_rgb(_save(Image.fromarray(a), tmp_path / 'g.png'))
  np.testing.assert_array_equal(out, np.repeat(a[:, :, None], 3, 2))
  assert len(logged) == 1 and 'g.png' in logged[0] and 'L -> RGB' in logged[0]


def test_rgba_alpha_dropped(tmp_path, logged):
  a = np.zeros((8, 9, 4), np.uint8)
  a[..., 0], a[..., 3] = 200, 0  # fully transparent red stays red (not composited)
  out = decode.load_rgb(_save(Image.fromarray(a, 'RGBA'), tmp_path / 'a.png'))
  assert out.shape == (8, 9, 3) and np.all(out[..., 0] == 200) and np.all(out[..., 1:] == 0)
  assert 'alpha dropped' in logged[0] and 'RGBA' in logged[0]


def test_la(tmp_path, logged):
  img = Image.new('LA', (10, 12), (77, 10))
  out = decode.load_rgb(_save(img, tmp_path / 'la.png'))
  assert out.shape == (12, 10, 3) and np.all(out == 77)
  assert 'LA' in logged[0]


def test_palette_and_palette_with_transparency(tmp_path, logged):
  img = Image.new('P', (6, 5))
  img.putpalette([10, 20, 30] * 256)
  out = decode.load_rgb(_save(img, tmp_path / 'p.png'))
  assert np.all(out == [10, 20, 30])
  img.info['transparency'] = 0
  out = decode.load_rgb(_save(img, tmp_path / 'pt.png', transparency=0))
  assert np.all(out == [10, 20, 30])
  assert 'P -> RGB' in logged[0] and 'transparency' in logged[1]


def test_16bit_png_is_scaled_not_clipped(tmp_path, logged):
  a = np.array([[0, 257, 384, 32768, 65535]], np.uint16).repeat(3, 0)
  p = _save(Image.fromarray(a), tmp_path / 'd.png')
  assert Image.open(p).mode.startswith('I;16')
  out = decode.load_rgb(p)
  # cv2.imread: round-half-even(v / 256), saturated (384 / 256 = 1.5 → 2).
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 2, 128, 255])
  assert '16-bit' in logged[0]


def test_32bit_int_and_float_tiff(tmp_path, logged):
  a = np.array([[0, 65535], [32768, 1000]], np.int32)
  out = decode.load_rgb(_save(Image.fromarray(a), tmp_path / 'i.tif'))
  np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 4]])
  neg = np.array([[-10, 0], [10, 30]], np.int32)  # outside 16-bit range -> min-max stretch
  out = decode.load_rgb(_save(Image.fromarray(neg), tmp_path / 'n.tif'))
  np.testing.assert_array_equal(out[..., 0], [[0, 64], [128, 255]])
  f = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
  out = decode.load_rgb(_save(Image.fromarray(f), tmp_path / 'f.tif'))
  np.testing.assert_array_equal(out[..., 1], [[0, 128], [255, 64]])
  assert 'I read as 16-bit' in logged[0] and 'stretched' in logged[1] and 'float F' in logged[2]


def test_cmyk_jpeg(tmp_path, logged):
  p = _save(Image.new('CMYK', (16, 8), (0, 255, 255, 0)), tmp_path / 'c.jpg')
  assert Image.open(p).mode == 'CMYK'
  out = decode.load_rgb(p)
  assert out.shape == (8, 16, 3)
  assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60  # red
  assert 'CMYK -> RGB' in logged[0]


def _exif_jpeg(path, orientation, size=(40, 20)):
  img = Image.new('RGB', size, (0, 0, 0))
  img.paste((255, 255, 255), (0, 0, 10, 10))  # marker in the stored top-left corner
  exif = Image.Exif()
  exif[0x0112] = orientation
  img.save(path, exif=exif.tobytes(), quality=95)
  return path


def test_exif_rotation_transposes_shape(tmp_path, logged):
  p = _exif_jpeg(tmp_path / 'r.jpg', 6)  # 6: rotate 90 CW to display
  out = decode.load_rgb(p)
  assert out.shape == (40, 20, 3)
  assert out[:10, -10:].mean() > 200  # stored top-left ends up top-right
  assert 'EXIF orientation 6' in logged[0] and 'r.jpg' in logged[0]
  raw = decode.load_rgb(p, apply_exif=False)
  assert raw.shape == (20, 40, 3)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    decode.load_rgb(tmp_path / 'nope.jpg')
  assert 'nope.jpg' in str(e.value)


def test_random_bytes(tmp_path):
  p = tmp_path / 'junk.jpg'
  p.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
  with pytest.raises(decode.BadImageError) as e:
    decode.load_rgb(p)
  assert (
    isinstance(e.value, ValueError)
    and e.value.path == str(p)
    and 'not a recognised image' in str(e.value)
  )


def test_truncated_jpeg(tmp_path):
  a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, 'JPEG')
  p = tmp_path / 't.jpg'
  p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  with pytest.raises(decode.BadImageError) as e:
    decode.load_rgb(p)
  assert 'truncated' in str(e.value) and 't.jpg' in str(e.value)


def test_tiny_and_huge(tmp_path):
  p = _save(Image.new('RGB', (15, 40)), tmp_path / 'small.png')
  with pytest.raises(decode.BadImageError, match='minimum side is 16'):
    decode.load_rgb(p, min_side=16)
  assert decode.load_rgb(p, min_side=15).shape == (40, 15, 3)
  with pytest.raises(errors.ImageTooLargeError, match='above the limit of 599') as too_large:
    decode.load_rgb(p, max_pixels=599)
  # The library names the setting; front-ends spell it (--config.data.max_pixels, ...).
  assert too_large.value.setting == 'data.max_pixels' and too_large.value.limit == 599
  assert '--config' not in str(too_large.value)
  assert decode.load_rgb(p, max_pixels=600).shape == (40, 15, 3)


def test_decode_rgb_bytes():
  buf = io.BytesIO()
  Image.new('L', (5, 4), 9).save(buf, 'PNG')
  out = decode.decode_rgb(buf.getvalue(), 'rec[3]')
  assert out.shape == (4, 5, 3) and np.all(out == 9)
  with pytest.raises(decode.BadImageError, match=r'rec\[4\]'):
    decode.decode_rgb(b'garbage', 'rec[4]')


def test_load_mask_threshold(tmp_path):
  a = np.array([[0, 127, 128, 255]], np.uint8)
  m = decode.load_mask(_save(Image.fromarray(a), tmp_path / 'm.png'))
  np.testing.assert_array_equal(m, [[False, False, True, True]])
  rgb = np.zeros((1, 2, 3), np.uint8)
  rgb[0, 0] = [200, 0, 0]
  rgb[0, 1] = [0, 255, 255]  # only channel 0 counts
  m = decode.load_mask(_save(Image.fromarray(rgb), tmp_path / 'c.png'))
  np.testing.assert_array_equal(m, [[True, False]])
  pal = Image.new('P', (2, 1))
  pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
  pal.putpixel((1, 0), 1)
  np.testing.assert_array_equal(decode.load_mask(_save(pal, tmp_path / 'p.png')), [[False, True]])
  bilevel = Image.new('1', (2, 1))
  bilevel.putpixel((0, 0), 1)
  np.testing.assert_array_equal(
    decode.load_mask(_save(bilevel, tmp_path / 'b.png')), [[True, False]]
  )


def test_center_crop_rounding():
  # torchvision: top = int(round((H - s) / 2)) with Python (half-to-even) rounding
  assert decode.center_crop_offsets(5, 4) == (0, 0, 4)  # round(0.5) = 0
  assert decode.center_crop_offsets(7, 4) == (2, 0, 4)  # round(1.5) = 2
  assert decode.center_crop_offsets(9, 4) == (2, 0, 4)  # round(2.5) = 2
  assert decode.center_crop_offsets(4, 10) == (0, 3, 4)
  a = np.arange(7 * 4).reshape(7, 4)
  np.testing.assert_array_equal(decode.center_crop_square(a), a[2:6])


def test_real_absl_logging_formats(tmp_path):
  # one call through the real absl logger (not monkeypatched) to check the format string
  assert decode.logging is absl_logging
  decode.load_rgb(_save(Image.new('L', (3, 3)), tmp_path / 'l.png'))
