"""Weights both ways: timm/Cream -> ours -> timm, the CLI, and mismatch errors."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cream_clip import CfgNode, cream_clip
from timm_reference import (assert_logits_close, create_timm_model, jit_forward, perturb,
                            timm_logits)
from tinyvit_jax import convert, model_checkpoint, torch_state_dicts
from tinyvit_jax.models import timm_weights
from tinyvit_jax.models import create_model
from tinyvit_jax.models import registry

_NAMES = ['tiny_vit_5m_224', 'deit_tiny_distilled_patch16_224']


def _images(size=224, batch=2, seed=1):
  return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def _ours_from_timm(name, timm_model, **kwargs):
  model = registry.create_unfilled(name, **kwargs)
  timm_weights.load_timm_state_dict(model, timm_model.state_dict())
  model.eval()
  return model


@pytest.mark.parametrize('name', _NAMES)
def test_round_trip_through_timm_safetensors(name, tmp_path):
  """ours -> timm-named safetensors -> timm (strict load) gives the same logits."""
  source = create_timm_model(name, seed=3)
  ours = _ours_from_timm(name, source)
  path = str(tmp_path / 'w.safetensors')
  timm_weights.write_timm_safetensors(ours, path)

  from safetensors.torch import load_file
  fresh = create_timm_model(name, seed=99)
  fresh.load_state_dict(load_file(path), strict=True)
  fresh.eval()
  images = _images()
  assert_logits_close(jit_forward(ours, images), timm_logits(fresh, images))


def _timm_to_cream_by_the_documented_renaming(sd):
  """Written independently of convert.py, from the key list in facts.md."""
  out = {}
  for key, value in sd.items():
    if key.endswith('num_batches_tracked'):
      continue
    key = key.replace('patch_embed.conv1.', 'patch_embed.seq.0.')
    key = key.replace('patch_embed.conv2.', 'patch_embed.seq.2.')
    key = re.sub(r'\.conv\.(weight)$', r'.c.\1', key)
    key = key.replace('head.norm.', 'norm_head.').replace('head.fc.', 'head.')
    m = re.match(r'stages\.(\d+)\.downsample\.(.*)', key)
    if m:  # Cream keeps patch merging at the end of the previous layer
      key = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
    key = re.sub(r'^stages\.', 'layers.', key)
    out[key] = value
  # Cream also stores the bias index buffers; they hold no weights.
  out['layers.1.blocks.0.attn.attention_bias_idxs'] = torch.zeros(49, 49, dtype=torch.long)
  return out


def test_cream_checkpoint_loads_and_matches(tmp_path):
  timm_model = create_timm_model('tiny_vit_5m_224', seed=5)
  cream_sd = _timm_to_cream_by_the_documented_renaming(timm_model.state_dict())
  assert 'layers.0.downsample.conv2.c.weight' in cream_sd
  path = tmp_path / 'tiny_vit_5m_1k.pth'
  torch.save({'model': cream_sd, 'epoch': 299}, path)

  ours = registry.create_unfilled('tiny_vit_5m_224')
  timm_weights.load_timm_state_dict(ours, torch_state_dicts.read_state_dict(str(path)))
  ours.eval()
  timm_model.eval()
  images = _images()
  assert_logits_close(jit_forward(ours, images), timm_logits(timm_model, images))


def test_mismatch_lists_every_key_with_shapes():
  sd = {k: v for k, v in create_timm_model('tiny_vit_5m_224').state_dict().items()}
  del sd['stages.1.blocks.0.attn.qkv.weight']
  del sd['head.norm.bias']
  sd['stages.9.extra.weight'] = torch.zeros(3)
  sd['stages.2.blocks.0.attn.attention_biases'] = torch.zeros(5, 49)
  with pytest.raises(timm_weights.StateDictMismatch) as err:
    timm_weights.load_timm_state_dict(registry.create_unfilled('tiny_vit_5m_224'), sd)
  msg = str(err.value)
  assert '2 missing' in msg and 'stages.1.blocks.0.attn.qkv.weight' in msg
  assert 'head.norm.bias' in msg
  assert '1 unexpected' in msg and 'stages.9.extra.weight' in msg
  assert 'stages.2.blocks.0.attn.attention_biases: expected (5, 196), found (5, 49)' in msg


def test_head_size_mismatch_names_the_flag():
  sd = create_timm_model('tiny_vit_5m_224', num_classes=21841).state_dict()
  with pytest.raises(timm_weights.StateDictMismatch, match='pass --num-classes 21841'):
    timm_weights.load_timm_state_dict(registry.create_unfilled('tiny_vit_5m_224'), sd)


def test_21k_head_loads_into_a_21k_model():
  timm_model = create_timm_model('tiny_vit_5m_224', num_classes=21841, seed=7)
  ours = _ours_from_timm('tiny_vit_5m_224', timm_model, num_classes=21841)
  timm_model.eval()
  images = _images(batch=1)
  assert_logits_close(jit_forward(ours, images), timm_logits(timm_model, images))


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'tinyvit_jax.convert', *args], capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_cli_both_ways(tmp_path, capsys):
  """.pth -> our orbax checkpoint (head size read from the file) -> timm safetensors."""
  timm_model = create_timm_model('tiny_vit_5m_224', num_classes=21841, seed=11)
  torch.save(timm_model.state_dict(), tmp_path / 'in.pth')
  out = tmp_path / 'ours'
  result = _cli('--model', 'tiny_vit_5m_224', '--from', str(tmp_path / 'in.pth'), '--out', str(out))
  assert result.returncode == 0, result.stderr
  assert '21841 classes' in result.stdout

  restored = model_checkpoint.restore_model(str(out))
  restored.eval()
  timm_model.eval()
  images = _images(batch=1)
  assert_logits_close(jit_forward(restored, images), timm_logits(timm_model, images))

  # The rest in this process: each CLI start costs ~7 s of imports, and the entry point
  # (``python -m``) is checked above.
  assert convert.run(
      ['--model', 'tiny_vit_5m_224', '--from',
       str(tmp_path / 'in.pth'), '--out',
       str(out)]) == 2
  assert 'exists' in capsys.readouterr().err
  assert convert.run([
      '--model', 'tiny_vit_5m_224', '--from',
      str(out), '--to-timm',
      str(tmp_path / 'back.safetensors')
  ]) == 0
  from safetensors.torch import load_file
  fresh = create_timm_model('tiny_vit_5m_224', num_classes=21841, seed=0)
  fresh.load_state_dict(load_file(tmp_path / 'back.safetensors'), strict=True)
  fresh.eval()
  np.testing.assert_array_equal(timm_logits(fresh, images), timm_logits(timm_model, images))


def test_cli_missing_file_is_a_clear_error(tmp_path):
  result = _cli('--model', 'tiny_vit_5m_224', '--from', str(tmp_path / 'nope.pth'), '--out',
                str(tmp_path / 'o'))
  assert result.returncode == 2
  assert 'nope.pth' in result.stderr and 'does not exist' in result.stderr
  assert not (tmp_path / 'o').exists()


def test_restore_from_a_non_checkpoint_dir_says_how_to_make_one(tmp_path):
  with pytest.raises(model_checkpoint.CheckpointError, match='tinyvit_jax.convert'):
    model_checkpoint.restore_model(str(tmp_path))


def test_a_failed_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
  model = create_model('deit_tiny_patch16_224', img_size=32, num_classes=3)

  def broken_dump(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(model_checkpoint.json, 'dump', broken_dump)
  with pytest.raises(OSError, match='disk full'):
    model_checkpoint.save_model(str(tmp_path / 'ckpt'), model, 'deit_tiny_patch16_224', img_size=32,
                                num_classes=3)
  assert list(tmp_path.iterdir()) == []


def test_full_disk_is_one_line_naming_the_file_and_the_output_flag(tmp_path, small_disk, capsys):
  checkpoint = str(tmp_path / 'ckpt')
  model_checkpoint.save_model(checkpoint,
                              create_model('deit_tiny_patch16_224', img_size=32, num_classes=3),
                              'deit_tiny_patch16_224', img_size=32, num_classes=3)
  out = os.path.join(small_disk.path, 'w.safetensors')
  small_disk.fill()
  assert convert.run(['--from', checkpoint, '--to-timm', out]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f'error: no space left writing {out} ({shutil.disk_usage(small_disk.path).free:,} bytes '
      'free): free space or move --to-timm, then rerun.'
  ]
  assert os.listdir(small_disk.path) == ['ballast']  # no temporary file left


def _small_cream_clip(seed=0):
  """Cream's CLIP teacher at width 128 (2 heads), 2 blocks, 3x3 patches of 14, proj to 48."""
  model = cream_clip(width=128, layers=2, img_size=42, embed_dim=48, num_classes=10, seed=seed)
  perturb(model, seed)
  return model


_SMALL_CLIP = dict(embed_dim=128, depth=2, num_heads=2, img_size=42)


def test_cream_clip_training_checkpoint_loads_and_matches(tmp_path):
  """Cream's save_checkpoint keeps a yacs CfgNode under 'config' beside 'model': the
  weights are read without unpickling it, and give Cream's logits."""
  cream = _small_cream_clip()
  path = tmp_path / 'ckpt_epoch_89.pth'
  config = CfgNode({'MODEL': CfgNode({'TYPE': 'clip_vit_large14_224'})})
  torch.save({'model': cream.state_dict(), 'config': config, 'epoch': 89}, path)

  ours = create_model('clip_vit_large14_224', proj_dim=48, num_classes=10, **_SMALL_CLIP)
  timm_weights.load_timm_state_dict(ours, torch_state_dicts.read_state_dict(str(path)))
  ours.eval()
  images = _images(42)
  assert_logits_close(jit_forward(ours, images), timm_logits(cream, images))


def test_bare_openai_clip_tower_loads_with_proj_as_head():
  """Without Cream's head, proj becomes timm's head (zero bias), as timm loads CLIP."""
  tower = _small_cream_clip(seed=2).visual
  sd = {f'visual.{k}': v for k, v in tower.state_dict().items()}
  ours = create_model('vit_large_patch14_clip_quickgelu_224', num_classes=48, **_SMALL_CLIP)
  timm_weights.load_timm_state_dict(ours, torch_state_dicts.openai_clip_to_timm(sd))
  ours.eval()
  images = _images(42)
  assert_logits_close(jit_forward(ours, images), timm_logits(tower, images))


@pytest.mark.parametrize('content',
                         [np.random.RandomState(0).bytes(4096), b'model: not a checkpoint\n'],
                         ids=['bytes', 'text'])
def test_cli_non_checkpoint_is_one_error_line(content, tmp_path, capsys):
  path = tmp_path / 'weights.pth'
  path.write_bytes(content)
  code = convert.run(
      ['--model', 'deit_tiny_patch16_224', '--from',
       str(path), '--out',
       str(tmp_path / 'o')])
  lines = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and lines[0].startswith('error: ')
  assert str(path) in lines[0] and not (tmp_path / 'o').exists()


def test_cli_at_another_size_resamples_and_records_the_normalisation(tmp_path):
  """--img-size 32 from 224 weights: timm's resampled pos_embed, the size in model.json,
  and the name's mean/std in its metadata."""
  from timm.models.vision_transformer import checkpoint_filter_fn
  sd = create_timm_model('deit_tiny_patch16_224', seed=4).state_dict()
  torch.save(sd, tmp_path / 'in.pth')
  out = tmp_path / 'ours'
  assert convert.run([
      '--model', 'deit_tiny_patch16_224', '--from',
      str(tmp_path / 'in.pth'), '--out',
      str(out), '--img-size', '32'
  ]) == 0
  meta = model_checkpoint.read_model_json(str(out))
  assert meta['kwargs'] == dict(num_classes=1000, img_size=32)
  assert meta['metadata'] == dict(preprocess=dict(
      image_size=32, crop_pct=0.875, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))

  timm_model = create_timm_model('deit_tiny_patch16_224', img_size=32)
  timm_model.load_state_dict(checkpoint_filter_fn(sd, timm_model), strict=True)
  restored = model_checkpoint.restore_model(str(out))
  restored.eval()
  images = _images(32)
  assert_logits_close(jit_forward(restored, images), timm_logits(timm_model.eval(), images))


@pytest.mark.slow
def test_the_papers_clip_teacher_converts_at_full_size():
  """Cream's clip_vit_large14_224 at full size, 21,841 classes, through Cream's key names
  -> our model: Cream's logits at batch 1. (Reading Cream's saved file with its config,
  and the CLI, are checked at small size above: at full size their 1.2 GB of writes and
  reads cost most of a minute.)"""
  cream = cream_clip()
  perturb(cream, 0)
  ours = registry.create_unfilled('clip_vit_large14_224', num_classes=21841)
  timm_weights.load_timm_state_dict(ours, torch_state_dicts.openai_clip_to_timm(cream.state_dict()))
  ours.eval()
  images = _images(batch=1)
  assert_logits_close(jit_forward(ours, images), timm_logits(cream, images))
