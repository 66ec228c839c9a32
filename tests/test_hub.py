"""Pretrained weights by name through a Hugging Face Hub cache, and exports timm loads back.

The repos are written by timm itself (``save_for_hf``) into a cache laid out as
huggingface_hub keeps one (``models--ORG--NAME/{blobs,refs,snapshots}``), and read through
the real ``hf_hub_download`` with ``HF_HUB_OFFLINE``: no test touches the network. Errors
only a live Hub gives (unknown repo or revision, gated) come from a stand-in
``hf_hub_download`` raising huggingface_hub's own exception types.
"""
import hashlib
import json
import os

import httpx2
import huggingface_hub
import hypothesis
import jax
import ml_collections
import numpy as np
import pytest
import timm
import torch
from flax import nnx
from huggingface_hub import errors as hub_errors
from hypothesis import strategies as st
from timm.models._hub import save_for_hf

from timm_reference import assert_logits_close, jit_forward, perturb, timm_logits
from tinyvit_jax import convert, model_checkpoint, predict
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.errors import UserError
from tinyvit_jax.models import create_model, hub, list_models, registry
from tinyvit_jax.train import pretrained

_TINY_VIT = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4])
_DEIT = dict(embed_dim=48, depth=2, num_heads=2, img_size=32)
_CLIP = dict(embed_dim=48, depth=2, num_heads=2, img_size=28, patch_size=14)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """An empty Hub cache, offline, for this process and the ones it starts."""
  root = tmp_path / 'hub'
  root.mkdir()
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(root))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setenv('HF_HUB_CACHE', str(root))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  return root


def _publish(cache, repo: str, folder, *, missing=()) -> str:
  """Puts ``folder``'s files into ``cache`` as huggingface_hub stores a download of
  ``repo`` at main: blobs by hash, snapshot links, the ref; ``missing`` files recorded
  as absent from the repo (``.no_exist``), as a download that found none leaves them."""
  base = cache / f'models--{repo.replace("/", "--")}'
  files = sorted(os.listdir(folder))
  commit = hashlib.sha1(repo.encode() + ''.join(files).encode()).hexdigest()
  for sub in ('blobs', 'refs', f'snapshots/{commit}', f'.no_exist/{commit}'):
    (base / sub).mkdir(parents=True, exist_ok=True)
  for name in files:
    data = open(os.path.join(folder, name), 'rb').read()
    blob = base / 'blobs' / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    snapshot = base / 'snapshots' / commit
    os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
  for name in missing:
    (base / '.no_exist' / commit / name).touch()
  (base / 'refs' / 'main').write_text(commit)
  return commit


def _timm_repo(cache, tmp_path, repo, arch, *, seed=0, safe=True, **kwargs):
  """A timm model with random (perturbed) weights, saved by timm into ``repo``."""
  torch.manual_seed(seed)
  model = timm.create_model(arch, pretrained=False, **kwargs)
  perturb(model, seed)
  model.eval()
  folder = tmp_path / repo.replace('/', '_')
  save_for_hf(model, str(folder), safe_serialization=safe)
  _publish(cache, repo, folder, missing=() if safe else (hub.SAFE_WEIGHTS,))
  return model


def _images(size, batch=2, seed=1):
  return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def test_pretrained_by_timm_name_matches_timm_and_timm_loads_it_back(cache, tmp_path):
  """``ARCH.TAG`` -> timm/ARCH.TAG; its model_args, classes and preprocessing are the repo's.
  Written back (``convert --to-timm FOLDER``, the class names with it), timm reads the
  folder from a Hub cache and computes what we compute."""
  source = _timm_repo(cache, tmp_path, 'timm/tiny_vit_5m_224.dist_in22k', 'tiny_vit_5m_224',
                      num_classes=4, **_TINY_VIT)
  ours = create_model('tiny_vit_5m_224.dist_in22k', pretrained=True)
  ours.eval()
  assert ours.num_classes == 4
  images = _images(48)
  logits = jit_forward(ours, images)
  assert_logits_close(logits, timm_logits(source, images))
  assert create_model('tiny_vit_5m_224', pretrained=True).num_classes == 4  # default tag
  meta = model_checkpoint.read_model_json('hf-hub:timm/tiny_vit_5m_224.dist_in22k')
  assert model_checkpoint.preprocess(meta) == dict(image_size=224, crop_pct=0.95,
                                                   interpolation='bicubic',
                                                   mean=list(timm.data.IMAGENET_DEFAULT_MEAN),
                                                   std=list(timm.data.IMAGENET_DEFAULT_STD))
  theirs = _timm_reads_our_folder(cache, tmp_path, ours, 'tiny_vit_5m_224', _TINY_VIT)
  assert_logits_close(logits, timm_logits(theirs, images))


def _timm_reads_our_folder(cache, tmp_path, model, arch, kwargs):
  """``model`` saved as our checkpoint with class names, exported by ``convert --to-timm
  FOLDER``, and loaded by timm from a Hub cache holding that folder."""
  checkpoint = tmp_path / 'ours'
  labels = [f'class {c}' for c in range(model.num_classes)]
  model_checkpoint.save_model(str(checkpoint), model, arch, num_classes=model.num_classes, **kwargs,
                              metadata=dict(labels=labels))
  folder = tmp_path / 'export'
  assert convert.run(['--from', str(checkpoint), '--to-timm', str(folder)]) == 0
  _publish(cache, 'me/exported', folder)
  theirs = timm.create_model('hf-hub:me/exported', pretrained=True)
  theirs.eval()
  assert theirs.pretrained_cfg['label_names'] == labels
  return theirs


def test_default_tags_and_repos_are_timms():
  """Every registered model timm publishes: our default tag is timm's, and ``ARCH.TAG``
  resolves to the repo timm downloads it from (the QuickGELU towers' shared repos too)."""
  published = {}
  for name in timm.list_pretrained():
    arch, tag = name.split('.', 1)
    published.setdefault(arch, []).append(tag)
  ours = {arch for arch in list_models() if arch in published}
  assert ours == set(hub.DEFAULT_TAGS)
  for arch in ours:
    assert hub.DEFAULT_TAGS[arch] == timm.models.get_pretrained_cfg(arch).tag, arch
    for tag in published[arch]:
      repo, revision, resolved = hub.resolve(f'{arch}.{tag}')
      assert (repo, revision,
              resolved) == (timm.models.get_pretrained_cfg(f'{arch}.{tag}').hf_hub_id, 'main', arch)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(org=st.from_regex(r'[A-Za-z0-9][\w.-]{0,20}', fullmatch=True),
                  name=st.from_regex(r'[A-Za-z0-9][\w.-]{0,40}', fullmatch=True),
                  revision=st.one_of(st.none(), st.from_regex(r'[\w.-]{1,40}', fullmatch=True)))
def test_hub_names_parse(org, name, revision):
  full = f'hf-hub:{org}/{name}' + (f'@{revision}' if revision else '')
  assert hub.resolve(full) == (f'{org}/{name}', revision or 'main', None)
  with pytest.raises(hub.HubError, match='expected hf-hub:ORG/NAME'):
    hub.resolve(f'hf-hub:{org}')


def test_distilled_deit_from_hf_hub_name_at_a_revision(cache, tmp_path):
  source = _timm_repo(cache, tmp_path, 'someone/deit', 'deit_tiny_distilled_patch16_224',
                      num_classes=5, **_DEIT)
  commit = (cache / 'models--someone--deit' / 'refs' / 'main').read_text()
  ours = create_model(f'hf-hub:someone/deit@{commit}', pretrained=True)
  ours.eval()
  images = _images(32)
  assert_logits_close(jit_forward(ours, images), timm_logits(source, images))


def test_clip_teacher_from_the_hub_carries_its_normalisation(cache, tmp_path):
  """A Hub teacher's outputs on views normalised the student's way (ImageNet's) are the
  timm model's on the same pixels normalised its own way (CLIP's), as for converted ones:
  in the save pass and online."""
  source = _timm_repo(cache, tmp_path, 'timm/vit_base_patch16_clip_224.openai',
                      'vit_base_patch16_clip_quickgelu_224', num_classes=6, **_CLIP)
  name = 'hf-hub:timm/vit_base_patch16_clip_224.openai'
  assert model_checkpoint.read_model_json(name)['metadata']['preprocess']['mean'] == list(
      timm.data.OPENAI_CLIP_MEAN)
  teacher = jax_teacher.from_checkpoint(name)  # the student's views: ImageNet-normalised
  pixels = np.random.RandomState(2).rand(2, 28, 28, 3).astype(np.float32)
  student_view = (pixels - timm.data.IMAGENET_DEFAULT_MEAN) / timm.data.IMAGENET_DEFAULT_STD
  own_view = (pixels - timm.data.OPENAI_CLIP_MEAN) / timm.data.OPENAI_CLIP_STD
  expected = torch.softmax(torch.from_numpy(timm_logits(source, own_view.astype(np.float32))),
                           -1).numpy()
  np.testing.assert_allclose(np.asarray(teacher.probabilities(student_view.astype(np.float32))),
                             expected, atol=2e-5)
  online, leaves = jax_teacher.online(ml_collections.ConfigDict(dict(teacher=name)), None,
                                      pipeline.data_mesh(jax.local_devices()), 6)
  np.testing.assert_allclose(
      np.asarray(jax.nn.softmax(online(leaves, student_view.astype(np.float32)))), expected,
      atol=2e-5)


def test_finetune_init_from_the_official_21k_name(cache, tmp_path):
  """init.checkpoint = an hf-hub name, its head gathered through a class-index file."""
  source = _timm_repo(cache, tmp_path, 'timm/tiny_vit_5m_224.dist_in22k', 'tiny_vit_5m_224',
                      num_classes=9, **_TINY_VIT)
  index = tmp_path / 'classes.txt'
  index.write_text('4\n0\n8\n')
  # Every weight comes from the checkpoint, so the student's own random init is skipped.
  model = registry.create_unfilled('tiny_vit_5m_224', num_classes=3, **_TINY_VIT)
  pretrained.load_into(model, 'hf-hub:timm/tiny_vit_5m_224.dist_in22k', head=str(index))
  np.testing.assert_array_equal(np.asarray(model.head.fc.kernel[...]),
                                source.head.fc.weight.detach().numpy()[[4, 0, 8]].T)


def test_convert_and_predict_take_hub_names(cache, tmp_path):
  _timm_repo(cache, tmp_path, 'someone/deit', 'deit_tiny_distilled_patch16_224', num_classes=5,
             **_DEIT)
  out = tmp_path / 'converted'
  assert convert.run(['--from', 'hf-hub:someone/deit', '--out', str(out)]) == 0
  assert model_checkpoint.read_model_json(str(out))['model'] == 'deit_tiny_distilled_patch16_224'
  image = tmp_path / 'x.png'
  from PIL import Image
  Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 40, 3), np.uint8)).save(image)
  by_name = predict.predict('hf-hub:someone/deit', [str(image)])
  assert by_name == predict.predict(str(out), [str(image)])


def test_pickled_weights_are_refused_unless_asked(cache, tmp_path):
  source = _timm_repo(cache, tmp_path, 'someone/old', 'deit_tiny_distilled_patch16_224',
                      num_classes=5, safe=False, **_DEIT)
  with pytest.raises(hub.HubError, match='allow_pickle=True'):
    create_model('hf-hub:someone/old', pretrained=True)
  # timm's way: without pretrained, the repo's architecture and no weights read (shapes only)
  assert nnx.eval_shape(lambda: create_model('hf-hub:someone/old')).head.kernel.shape == (48, 5)
  ours = create_model('hf-hub:someone/old', pretrained=True, allow_pickle=True)
  ours.eval()
  images = _images(32)
  assert_logits_close(jit_forward(ours, images), timm_logits(source, images))


def _one_line_error(call, *patterns):
  with pytest.raises(UserError) as error:
    call()
  message = str(error.value)
  assert '\n' not in message
  for pattern in patterns:
    assert pattern in message, message
  return message


def test_errors_are_one_line(cache, tmp_path, monkeypatch, capsys):
  _timm_repo(cache, tmp_path, 'someone/deit', 'deit_tiny_distilled_patch16_224', num_classes=5,
             **_DEIT)
  offline = _one_line_error(lambda: create_model('hf-hub:someone/absent@v2', pretrained=True),
                            'someone/absent@v2', 'HF_HUB_OFFLINE=1', 'hf download someone/absent')
  assert convert.run(['--from', 'hf-hub:someone/absent@v2', '--out', str(tmp_path / 'x')]) == 2
  assert capsys.readouterr().err == f'error: {offline}\n'
  _one_line_error(lambda: create_model('tiny_vit_5m_22.in1k', pretrained=True), 'tiny_vit_5m_224')
  config = json.loads(open(tmp_path / 'someone_deit' / 'config.json').read())
  unregistered = tmp_path / 'unregistered'
  unregistered.mkdir()
  (unregistered / 'config.json').write_text(
      json.dumps({
          **config, 'architecture': 'deit_tiny_patch16_22'
      }))
  _publish(cache, 'someone/unregistered', unregistered)
  _one_line_error(lambda: create_model('hf-hub:someone/unregistered', pretrained=True),
                  "'deit_tiny_patch16_22' is not registered", 'deit_tiny_patch16_224')
  unfit = tmp_path / 'unfit'
  unfit.mkdir()
  (unfit / 'config.json').write_text(json.dumps({
      **config, 'architecture': 'deit_tiny_patch16_224'
  }))
  os.link(tmp_path / 'someone_deit' / 'model.safetensors', unfit / 'model.safetensors')
  _publish(cache, 'someone/unfit', unfit)
  _one_line_error(lambda: create_model('hf-hub:someone/unfit', pretrained=True),
                  'do not fit deit_tiny_patch16_224', 'unexpected dist_token')

  response = httpx2.Response(404, request=httpx2.Request('GET', 'https://huggingface.co'))
  for raised, patterns in ((hub_errors.RepositoryNotFoundError, ('no such model repo', 'HF_TOKEN')),
                           (hub_errors.RevisionNotFoundError, ("no revision 'v9'",)),
                           (hub_errors.GatedRepoError, ('gated', 'HF_TOKEN'))):

    def refuse(*args, raised=raised, **kwargs):
      raise raised('the Hub said no', response=response)

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', refuse)
    _one_line_error(lambda: create_model('hf-hub:someone/deit@v9', pretrained=True), *patterns)


@pytest.mark.parametrize('arch,kwargs,size', [
    ('deit_tiny_distilled_patch16_224', _DEIT, 32),
    ('vit_base_patch16_clip_quickgelu_224', _CLIP, 28),
])
def test_timm_loads_the_folder_we_write(arch, kwargs, size, cache, tmp_path):
  model = create_model(arch, num_classes=4, **kwargs)
  theirs = _timm_reads_our_folder(cache, tmp_path, model, arch, kwargs)
  model.eval()
  images = _images(size)
  assert_logits_close(jit_forward(model, images), timm_logits(theirs, images))


def test_push_uploads_the_folder(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo',
                      lambda self, repo, **kwargs: calls.append(('create', repo)))
  monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', lambda self, **kwargs: calls.append(
      ('upload', kwargs)) or 'commit-url')
  model = create_model('deit_tiny_patch16_224', num_classes=3, **_DEIT)
  checkpoint = tmp_path / 'ours'
  model_checkpoint.save_model(str(checkpoint), model, 'deit_tiny_patch16_224', num_classes=3,
                              **_DEIT)
  (tmp_path / 'summary.json').write_text(json.dumps([dict(run='', top1=0.625)]))
  folder = tmp_path / 'export'
  assert convert.run(['--from',
                      str(checkpoint), '--to-timm',
                      str(folder), '--push', 'me/student']) == 0
  card = (folder / 'README.md').read_text()
  assert '| 0.625 |' in card and 'hf-hub:me/student' in card
  assert calls[0] == ('create', 'me/student')
  assert calls[1][1]['repo_id'] == 'me/student'
  assert calls[1][1]['folder_path'] == str(folder)
  assert sorted(os.listdir(folder)) == ['README.md', 'config.json', 'model.safetensors']
