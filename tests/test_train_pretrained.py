"""Fine-tuning starts: a 21,841-class checkpoint into a 1,000-class model, both ways."""
import numpy as np
import pytest
from flax import nnx

from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax.models import WEIGHTS, create_model
from tinyvit_jax.train import pretrained

SMALL = dict(img_size=32, embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4], depths=[1, 1, 2, 1],
             window_sizes=[4, 4, 2, 1])


def flat(model) -> dict:
  return {
      '/'.join(map(str, path)): np.asarray(v.value)
      for path, v in nnx.to_flat_state(nnx.state(model, WEIGHTS))
  }


@pytest.fixture(scope='module')
def checkpoint_21k(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('ckpt') / 'in21k')
  model = create_model('tiny_vit_5m_224', num_classes=21841, rngs=nnx.Rngs(7), **SMALL)
  model_checkpoint.save_model(directory, model, 'tiny_vit_5m_224', num_classes=21841, **SMALL)
  return directory, flat(model)


def fresh_1k():
  return create_model('tiny_vit_5m_224', num_classes=1000, rngs=nnx.Rngs(3), **SMALL)


def test_reinit_copies_the_body_and_keeps_a_fresh_head(checkpoint_21k):
  directory, source = checkpoint_21k
  model, initial = fresh_1k(), flat(fresh_1k())
  pretrained.load_into(model, directory, head='reinit')
  loaded = flat(model)
  for name, value in loaded.items():
    if name.startswith('head/fc/'):
      np.testing.assert_array_equal(value, initial[name])
    else:
      np.testing.assert_array_equal(value, source[name])
  assert loaded['head/fc/kernel'].shape == (128, 1000)


def test_class_index_file_gathers_the_head_rows(checkpoint_21k, tmp_path):
  directory, source = checkpoint_21k
  mapping = np.random.default_rng(0).choice(21841, size=1000, replace=False)
  index_file = tmp_path / 'classes.txt'
  index_file.write_text('\n'.join(map(str, mapping)) + '\n')
  model = fresh_1k()
  pretrained.load_into(model, directory, head=str(index_file))
  loaded = flat(model)
  np.testing.assert_array_equal(loaded['head/fc/kernel'], source['head/fc/kernel'][:, mapping])
  np.testing.assert_array_equal(loaded['head/fc/bias'], source['head/fc/bias'][mapping])
  np.testing.assert_array_equal(loaded['head/norm/scale'], source['head/norm/scale'])


def test_keep_with_another_class_count_says_what_to_set(checkpoint_21k):
  with pytest.raises(errors.UserError, match='21841 classes and the model 1000: set '
                     '--config.init.head=reinit') as error:
    pretrained.load_into(fresh_1k(), checkpoint_21k[0], head='keep')
  assert '\n' not in str(error.value)  # main's one error: line


@pytest.mark.parametrize(
    'lines, message',
    [(['1'] * 999, 'has 999 lines; the model has 1000 classes'),
     (['5'] * 999 + ['21841'], "line 1000 holds 21841, outside the checkpoint's 21841"),
     (['x'] * 1000, 'every line must be one integer')])
def test_bad_class_index_file_is_named(checkpoint_21k, tmp_path, lines, message):
  index_file = tmp_path / 'classes.txt'
  index_file.write_text('\n'.join(lines))
  with pytest.raises(ValueError, match=message):
    pretrained.load_into(fresh_1k(), checkpoint_21k[0], head=str(index_file))


def test_missing_checkpoint_is_named(tmp_path):
  with pytest.raises(model_checkpoint.CheckpointError, match='no_such_dir'):
    pretrained.load_into(fresh_1k(), str(tmp_path / 'no_such_dir'))
