"""Regenerates the PyTorch reference fixtures in tests/data (needs torch; not a test).

  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy pillow
  /tmp/torchenv/bin/python tests/data/make_torch_fixtures.py

- posembed_torch.npz: F.interpolate(bicubic, scale_factor=DINO's) of random 14×14 and
  28×28 grids to several patch grids — the oracle for models/posembed.py.
- vit_tiny8/: a random ViT-Tiny/8 (embed 192, 3 heads, depth 1) in DINO's state-dict
  format, saved with torch.save, and the q/k/v/CLS a plain PyTorch implementation of
  DINO's forward gives on a crop of tests/data/parity/images/chelsea.png — a patch-8
  model the parity data does not cover.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).parent
torch.manual_seed(0)


def interpolate(grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
  g = grid.shape[-1]
  return F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode='bicubic')


def posembed_fixture():
  out = {}
  for g in (14, 28):
    grid = torch.randn(1, 8, g, g)
    out[f'grid{g}'] = grid.numpy()
    for h, w in [(1, 1), (3, 40), (14, 14), (14, 15), (25, 37), (31, 23), (60, 7), (28, 28)]:
      out[f'grid{g}_{h}x{w}'] = interpolate(grid, h, w).numpy()
  np.savez(HERE / 'posembed_torch.npz', **out)


def vit_forward(sd, x, patch, heads):
  """DINO's forward written plainly in torch (LayerNorm eps 1e-6, exact GELU)."""
  d = sd['cls_token'].shape[-1]
  x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch)
  h, w = x.shape[-2:]
  x = x.flatten(2).transpose(1, 2)
  pos = sd['pos_embed']
  g = int(math.sqrt(pos.shape[1] - 1))
  grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
  grid = interpolate(grid, h, w).permute(0, 2, 3, 1).reshape(1, -1, d)
  x = torch.cat([sd['cls_token'], x], 1) + torch.cat([pos[:, :1], grid], 1)
  depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
  for i in range(depth):
    b = lambda n: sd[f'blocks.{i}.{n}']
    y = F.layer_norm(x, (d,), b('norm1.weight'), b('norm1.bias'), 1e-6)
    qkv = F.linear(y, b('attn.qkv.weight'), b('attn.qkv.bias'))
    t = qkv.shape[1]
    q, k, v = qkv.reshape(1, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(1, t, d)
    x = x + F.linear(y, b('attn.proj.weight'), b('attn.proj.bias'))
    y = F.layer_norm(x, (d,), b('norm2.weight'), b('norm2.bias'), 1e-6)
    y = F.linear(
        F.gelu(F.linear(y, b('mlp.fc1.weight'), b('mlp.fc1.bias'))),
        b('mlp.fc2.weight'),
        b('mlp.fc2.bias'),
    )
    x = x + y
  cls = F.layer_norm(x, (d,), sd['norm.weight'], sd['norm.bias'], 1e-6)[:, 0]
  return qkv[0, 1:], cls[0]


def vit_fixture():
  d, heads, patch, depth, g = 192, 3, 8, 1, 28
  sd = {
      'cls_token': torch.randn(1, 1, d),
      'pos_embed': torch.randn(1, 1 + g * g, d) * 0.5,
      'patch_embed.proj.weight': torch.randn(d, 3, patch, patch) * 0.1,
      'patch_embed.proj.bias': torch.randn(d) * 0.1,
      'norm.weight': 1 + 0.2 * torch.randn(d),
      'norm.bias': 0.2 * torch.randn(d),
  }
  for i in range(depth):
    for n, (o, k) in {
        'attn.qkv': (3 * d, d),
        'attn.proj': (d, d),
        'mlp.fc1': (4 * d, d),
        'mlp.fc2': (d, 4 * d),
    }.items():
      sd[f'blocks.{i}.{n}.weight'] = torch.randn(o, k) / math.sqrt(k)
      sd[f'blocks.{i}.{n}.bias'] = 0.1 * torch.randn(o)
    for n in ('norm1', 'norm2'):
      sd[f'blocks.{i}.{n}.weight'] = 1 + 0.2 * torch.randn(d)
      sd[f'blocks.{i}.{n}.bias'] = 0.2 * torch.randn(d)
  out = HERE / 'vit_tiny8'
  out.mkdir(exist_ok=True)
  torch.save(sd, out / 'checkpoint.pth')
  image = np.array(Image.open(HERE / 'parity/images/chelsea.png').convert('RGB'))[50:153, 200:341]
  Image.fromarray(image).save(out / 'image.png')
  crop = image[: image.shape[0] // patch * patch, : image.shape[1] // patch * patch]
  x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
  mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
  std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  with torch.no_grad():
    qkv, cls = vit_forward(sd, (x - mean) / std, patch, heads)
  np.savez(
      out / 'reference.npz',
      q=qkv[:, :d].numpy(),
      k=qkv[:, d : 2 * d].numpy(),
      v=qkv[:, 2 * d :].numpy(),
      cls=cls.numpy(),
  )


if __name__ == '__main__':
  posembed_fixture()
  vit_fixture()
