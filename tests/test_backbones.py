"""models/backbones.py registry and models/keymaps.py (official and Hugging Face names)."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectral_jax.models import backbones
from spectral_jax.models.weights import keymaps
from spectral_jax.models.weights.checkpoints import CheckpointError, read_state_dict

from tests import backbones_data as bd
from tests.conftest import MANIFEST as DINO_MANIFEST, PARITY as DINO_PARITY

NAMES = [
    'dino_vits16', 'dino_vits8', 'dino_vitb16', 'dino_vitb8',
    *(f'dinov2_vit{s}14{r}' for s in 'sblg' for r in ('', '_reg')),
    'dinov3_vits16', 'dinov3_vits16plus', 'dinov3_vitb16', 'dinov3_vitl16',
    'dino_resnet50',
]  # fmt: skip


def test_registry_entries_are_complete():
  assert sorted(backbones.BACKBONES) == sorted(NAMES)
  for name, b in backbones.BACKBONES.items():
    assert b.name == name and b.url.endswith('/' + b.filename) and b.licence
    assert b.gated == (b.family == 'dinov3')
    assert isinstance(backbones.build_model(b.arch), b.constructor)
    if b.family == 'resnet':
      assert (b.patch_size, b.embed_dim, b.feature_key) == (8, 2048, 'features')
      assert b.arch.layers == (3, 4, 6, 3)
      continue
    assert b.num_heads * 64 == b.embed_dim == b.arch.embed_dim and b.depth == b.arch.depth
    patch = int(name.split('vit')[1][1:].removesuffix('_reg').removesuffix('plus'))
    assert b.patch_size == b.arch.patch_size == patch
    prefix = 5 if name.endswith('_reg') or b.family == 'dinov3' else 1
    assert b.num_prefix_tokens == prefix
  assert backbones.BACKBONES['dinov2_vitg14'].arch.ffn == 'swiglufused'
  assert backbones.BACKBONES['dinov3_vits16plus'].arch.ffn == 'swiglu'
  assert backbones.BACKBONES['dinov2_vits14_reg'].filename == 'dinov2_vits14_reg4_pretrain.pth'
  assert backbones.BACKBONES['dinov3_vits16'].filename.endswith('lvd1689m-08c60483.pth')


def test_gated_weights_explain_how_to_get_them():
  with pytest.raises(CheckpointError) as e:
    backbones.load_backbone_params('dinov3_vits16', None)
  msg = str(e.value)
  for part in ('gated', 'Request access', 'DINOv3 License',
               'dinov3_vits16_pretrain_lvd1689m-08c60483.pth'):  # fmt: skip
    assert part in msg
  with pytest.raises(CheckpointError, match='dinov2_vits14_pretrain.pth'):
    backbones.load_backbone_params('dinov2_vits14', None)
  with pytest.raises(ValueError, match='unknown backbone'):
    backbones.get_backbone('dinov4')


def test_wrong_file_for_the_name_is_an_error():
  with pytest.raises(CheckpointError, match='wrong file'):
    backbones.load_backbone_params(
      'dinov2_vits14_reg', bd.DATA / 'dinov2_vits14' / 'checkpoint.pth'
    )


# Official → published Hugging Face names (protocol §5), written independently of keymaps.
def _official_to_hf_dinov2(sd):
  out = {}
  for name, value in sd.items():
    if m := re.fullmatch(r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)', name):
      for i, part in enumerate(('query', 'key', 'value')):
        d = value.shape[0] // 3
        out[f'encoder.layer.{m[1]}.attention.attention.{part}.{m[2]}'] = value[i * d : (i + 1) * d]
      continue
    for a, b in [
        (r'^cls_token$', 'embeddings.cls_token'), (r'^mask_token$', 'embeddings.mask_token'),
        (r'^pos_embed$', 'embeddings.position_embeddings'),
        (r'^register_tokens$', 'embeddings.register_tokens'),
        (r'^patch_embed\.proj\.', 'embeddings.patch_embeddings.projection.'),
        (r'^blocks\.(\d+)\.attn\.proj\.', r'encoder.layer.\1.attention.output.dense.'),
        (r'^blocks\.(\d+)\.ls(\d)\.gamma$', r'encoder.layer.\1.layer_scale\2.lambda1'),
        (r'^blocks\.(\d+)\.', r'encoder.layer.\1.'), (r'^norm\.', 'layernorm.'),
    ]:  # fmt: skip
      if re.search(a, name):
        name = re.sub(a, b, name)
        break
    out[name] = np.ascontiguousarray(value)
  return out


def test_hugging_face_dinov2_folder_gives_the_official_features(tmp_path):
  """The published Dinov2WithRegistersModel layout (names and shapes of the reference
  folder), rebuilt from the same tensors, loads to the official model's numerics."""
  sd = read_state_dict(bd.DATA / 'dinov2_vits14_reg' / 'checkpoint.pth')
  hf = _official_to_hf_dinov2(sd)
  published = json.loads((bd.DATA / 'dinov2_vits14_reg' / 'hf_keys.json').read_text())
  assert {k: list(v.shape) for k, v in hf.items()} == published
  folder = tmp_path / 'hf'
  folder.mkdir()
  save_file(hf, str(folder / 'model.safetensors'), metadata={'format': 'pt'})
  config = (bd.DATA / 'dinov2_vits14_reg' / 'hf_config.json').read_text()
  (folder / 'config.json').write_text(config)
  arch, variables = backbones.load_backbone_params('dinov2_vits14_reg', folder)
  ref_arch, ref_vars = backbones.load_backbone_params(
    'dinov2_vits14_reg', bd.DATA / 'dinov2_vits14_reg' / 'checkpoint.pth'
  )
  assert arch == ref_arch
  _assert_same_tree(variables, ref_vars)
  out = backbones.features(arch, variables, bd.image('dinov2_vits14_reg'))
  errs = bd.rel_errors(out, 'dinov2_vits14_reg')
  assert max(errs.values()) <= 1e-4, errs


def test_hugging_face_non_register_dinov2_keeps_official_resampling():
  sd = read_state_dict(bd.DATA / 'dinov2_vits14' / 'checkpoint.pth')
  config = {'model_type': 'dinov2', 'hidden_size': 384, 'num_attention_heads': 6}
  official = keymaps.hf_to_official(config, _official_to_hf_dinov2(sd))
  arch = keymaps.dinov2_arch(official, 6)
  assert (arch.interpolate_antialias, arch.interpolate_offset) == (False, 0.1)
  _assert_same_tree(keymaps.vit_to_flax(official), keymaps.vit_to_flax(sd))


def test_hugging_face_dinov3_names():
  """DINOv3ViTModel layout: q/k/v/o_proj (no key bias), up/down_proj, register_tokens, no
  periods (recomputed from rope_theta)."""
  sd = read_state_dict(bd.DATA / 'dinov3_vits16' / 'checkpoint.pth')
  hf = {
      'embeddings.cls_token': sd['cls_token'], 'embeddings.mask_token': sd['mask_token'],
      'embeddings.register_tokens': sd['storage_tokens'],
      'embeddings.patch_embeddings.weight': sd['patch_embed.proj.weight'],
      'embeddings.patch_embeddings.bias': sd['patch_embed.proj.bias'],
      'norm.weight': sd['norm.weight'], 'norm.bias': sd['norm.bias'],
  }  # fmt: skip
  for n in range(2):
    b, l = f'blocks.{n}.', f'layer.{n}.'
    w, bias = sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias']
    for i, part in enumerate('qkv'):
      hf[f'{l}attention.{part}_proj.weight'] = w[i * 384 : (i + 1) * 384]
      if part != 'k':
        hf[f'{l}attention.{part}_proj.bias'] = bias[i * 384 : (i + 1) * 384]
    for a, c in [('norm1', 'norm1'), ('norm2', 'norm2'), ('attn.proj', 'attention.o_proj'),
                 ('mlp.fc1', 'mlp.up_proj'), ('mlp.fc2', 'mlp.down_proj')]:  # fmt: skip
      for kind in ('weight', 'bias'):
        hf[f'{l}{c}.{kind}'] = sd[f'{b}{a}.{kind}']
    hf[l + 'layer_scale1.lambda1'] = sd[b + 'ls1.gamma']
    hf[l + 'layer_scale2.lambda1'] = sd[b + 'ls2.gamma']
  config = {
    'model_type': 'dinov3_vit',
    'hidden_size': 384,
    'num_attention_heads': 6,
    'rope_theta': 100.0,
  }
  got = keymaps.vit_to_flax(keymaps.hf_to_official(config, hf), mask_k_bias=True)
  want = keymaps.vit_to_flax(sd, mask_k_bias=True)
  np.testing.assert_allclose(got.pop('rope_periods'), 100.0 ** (np.arange(16) / 16), rtol=1e-6)
  want.pop('rope_periods')
  _assert_same_tree(got, want)


def test_hugging_face_dino_vit_names_and_registry_dino_features():
  """DINO v1 through the registry (vit.py) and ViTModel names, on the DINO parity data."""
  sd = read_state_dict(DINO_PARITY / 'checkpoint.pth')
  hf = {}
  for name, value in sd.items():
    for a, c in [
        (r'^blocks\.(\d+)\.norm1\.', r'encoder.layer.\1.layernorm_before.'),
        (r'^blocks\.(\d+)\.norm2\.', r'encoder.layer.\1.layernorm_after.'),
        (r'^blocks\.(\d+)\.attn\.proj\.', r'encoder.layer.\1.attention.output.dense.'),
        (r'^blocks\.(\d+)\.mlp\.fc1\.', r'encoder.layer.\1.intermediate.dense.'),
        (r'^blocks\.(\d+)\.mlp\.fc2\.', r'encoder.layer.\1.output.dense.'),
        (r'^cls_token$', 'embeddings.cls_token'),
        (r'^pos_embed$', 'embeddings.position_embeddings'),
        (r'^patch_embed\.proj\.', 'embeddings.patch_embeddings.projection.'),
        (r'^norm\.', 'layernorm.'),
    ]:  # fmt: skip
      if re.search(a, name):
        hf[re.sub(a, c, name)] = value
        break
    else:
      m = re.fullmatch(r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)', name)
      d = value.shape[0] // 3
      for i, part in enumerate(('query', 'key', 'value')):
        hf[f'encoder.layer.{m[1]}.attention.attention.{part}.{m[2]}'] = value[i * d : (i + 1) * d]
  hf['pooler.dense.weight'] = np.zeros((384, 384), np.float32)  # ViTModel's pooler: unused
  config = {'model_type': 'vit', 'hidden_size': 384, 'num_attention_heads': 6}
  got = keymaps.vit_to_flax(keymaps.hf_to_official(config, hf))
  _assert_same_tree(got, keymaps.vit_to_flax(sd))

  arch, variables = backbones.load_backbone_params('dino_vits16', DINO_PARITY / 'checkpoint.pth')
  image_id = 'chelsea'
  from PIL import Image  # pylint: disable=import-outside-toplevel

  image = np.array(Image.open(DINO_PARITY / 'images' / f'{image_id}.png').convert('RGB'))
  out = backbones.features(arch, variables, image)
  ref = np.load(DINO_PARITY / f'{image_id}.npz')['k']
  assert tuple(out['grid']) == tuple(DINO_MANIFEST['images'][image_id]['patch_grid'])
  assert np.abs(out['k'] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_features_by_name_infers_depth_from_the_parameters():
  for name in ('dino_resnet50', 'dinov3_vits16'):
    arch, variables = backbones.load_backbone_params(name, bd.DATA / name / 'checkpoint.pth')
    assert backbones.arch_for(name, variables) == arch


def _assert_same_tree(a, b):
  fa, fb = keymaps._flatten(a), keymaps._flatten(b)  # pylint: disable=protected-access
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg='/'.join(k))
