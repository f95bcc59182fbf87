"""Deep Spectral Methods from Python: cells to paste into a notebook (or run this file).

  python examples/quickstart.py [--checkpoint FILE] [--out DIR] [IMAGE ...]

Without a checkpoint the official DINO ViT-S/16 weights are downloaded once (87 MB, cached in
~/.cache/spectral_jax); offline, pass a local .pth (or set $SPECTRAL_JAX_CHECKPOINT). Without
images it uses photos that ship with scikit-image.
"""

# %% Setup: checkpoint, output folder, images (a notebook can just set these three names).
import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import spectral_jax as sj

checkpoint = os.environ.get('SPECTRAL_JAX_CHECKPOINT')  # None: the official weights
out, images = Path('quickstart_out'), []
if '__file__' in globals():  # run as a script (a notebook kernel's argv is its own, not ours)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', default=checkpoint)
  parser.add_argument('--out', default=str(out))
  parser.add_argument('images', nargs='*')
  args = parser.parse_args()
  checkpoint, out, images = args.checkpoint, Path(args.out), args.images
if not images:
  import skimage.data  # the scikit-image photos, as configs/demo.py

  folder = Path(skimage.data.__file__).parent
  images = [str(folder / name) for name in ('astronaut.png', 'chelsea.png', 'coffee.png')]
out.mkdir(parents=True, exist_ok=True)
print('images:', ', '.join(Path(p).name for p in images), '| outputs in:', out)

# %% Load the backbone once: the jitted ViT and its weights, reused by every call.
backbone = sj.load_backbone('dino_vits16', checkpoint=checkpoint)
print(backbone)

# %% Localize the main object: a list runs batched, one result per image.
results = sj.localize(backbone, images)
for path, r in zip(images, results):
  print(
    f'{Path(path).name}: box {r.box_xyxy} (x0, y0, x1, y1; exclusive max), '
    f'score {r.score:.3f}, image {r.image_size[1]}x{r.image_size[0]}'
  )

# %% A panel: each photo with its box and its object mask (PIL only, no matplotlib needed).
masks = sj.segment(backbone, images)
tiles = []
for path, r, mask in zip(images, results, masks):
  photo = Image.open(path).convert('RGB')
  tinted = np.asarray(photo).copy()
  tinted[mask] = (0.5 * tinted[mask] + [0, 127, 0]).astype(np.uint8)  # mask in green
  tile = Image.fromarray(tinted)
  ImageDraw.Draw(tile).rectangle(
    [r.box_xyxy[0], r.box_xyxy[1], r.box_xyxy[2] - 1, r.box_xyxy[3] - 1],  # inclusive corners
    outline=(255, 0, 0),
    width=3,
  )
  tiles.append(tile.resize((256, round(256 * tile.height / tile.width))))
panel = Image.new('RGB', (256 * len(tiles), max(t.height for t in tiles)), 'white')
for i, tile in enumerate(tiles):
  panel.paste(tile, (256 * i, 0))
panel.save(out / 'panel.png')
print('panel:', out / 'panel.png')
panel  # a notebook shows the panel here

# %% Remove the background of the first photo: RGBA cutout, and the object on white.
rgba = sj.remove_background(backbone, images[0])
Image.fromarray(rgba).save(out / 'cutout.png')
on_white = sj.remove_background(backbone, images[0], background='white')
Image.fromarray(on_white).save(out / 'on_white.png')
print('cutout:', out / 'cutout.png', rgba.shape, '| on white:', out / 'on_white.png')
Image.fromarray(rgba).reduce(2)  # a notebook shows the cutout here (half size)
