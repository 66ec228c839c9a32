"""Our weights under timm's names and back: the one mapping between a model's state and a
timm state_dict.

Our module names equal timm's, so a state path maps onto a timm key by renaming its
leaf (``kernel`` -> ``weight``, ``scale`` -> ``weight``, ``mean`` -> ``running_mean``, ...)
and transposing kernels (Linear ``(in, out)`` <-> ``(out, in)``, conv HWIO <-> OIHW). A
ViT checkpoint of another image size gets its ``pos_embed`` resampled, as timm does.
"""
import jax
import numpy as np
from flax import nnx

from tinyvit_jax import errors
from tinyvit_jax import writes
from tinyvit_jax.models.layers import WEIGHTS
from tinyvit_jax.models.vision_transformer import VisionTransformer, resample_abs_pos_embed

_LEAF_TO_TIMM = {
    'kernel': 'weight',
    'scale': 'weight',
    'mean': 'running_mean',
    'var': 'running_var'
}
# Keys timm/Cream carry that hold no weights of ours.
_IGNORED_SUFFIXES = ('num_batches_tracked', 'attention_bias_idxs')


class StateDictMismatch(errors.UserError, ValueError):
  """A checkpoint whose keys or shapes do not fit the model; lists every offender
  (``offenders``: each as 'missing KEY', 'unexpected KEY' or 'KEY: expected ..., found ...')."""

  def __init__(self, message: str, offenders: list[str]):
    super().__init__(message)
    self.offenders = offenders


def _to_timm_array(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == 'kernel' and value.ndim == 2:
    return value.T
  if leaf == 'kernel' and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW (depthwise (k,k,1,C) -> (C,1,k,k))
  return value


def _from_timm_array(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == 'kernel' and value.ndim == 2:
    return value.T
  if leaf == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return value


def _timm_layout(model: nnx.Module):
  """Yields (timm_key, state_path, leaf) for every weight the model holds."""
  state = nnx.state(model, WEIGHTS)
  for path, _ in nnx.to_flat_state(state):
    leaf = str(path[-1])
    yield '.'.join(map(str, path[:-1] + (_LEAF_TO_TIMM.get(leaf, leaf),))), path, leaf


def to_timm_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Our weights under timm's keys and layouts, float32, with BN's num_batches_tracked."""
  state = dict(nnx.to_flat_state(nnx.state(model, WEIGHTS)))
  out = {}
  for key, path, leaf in _timm_layout(model):
    out[key] = np.ascontiguousarray(_to_timm_array(leaf, np.asarray(state[path][...])))
    if leaf == 'var':
      out[key.rsplit('.', 1)[0] + '.num_batches_tracked'] = np.zeros((), np.int64)
  return out


def _head_hint(model, name: str, expected: tuple, found: tuple) -> str:
  if name in ('head.fc.weight', 'head.weight', 'head_dist.weight') and expected[1:] == found[1:]:
    return (f' The checkpoint has a {found[0]}-class head and the model {expected[0]}: '
            f'pass --num-classes {found[0]} (num_classes={found[0]}).')
  return ''


def load_timm_state_dict(model: nnx.Module, state_dict) -> nnx.Module:
  """Loads a timm-named state_dict (numpy or torch tensors) into ``model`` in place; its
  weights may be abstract (``nnx.eval_shape``), as the checkpoint sets them all.

  Every missing, unexpected or wrongly shaped key is reported in one error.
  """
  sd = {k: as_numpy(v) for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  sd = _fit_pos_embed(model, sd)
  state = nnx.state(model, WEIGHTS)
  flat = dict(nnx.to_flat_state(state))
  missing, wrong_shape, hint, updates = [], [], '', {}
  expected_keys = set()
  for key, path, leaf in _timm_layout(model):
    expected_keys.add(key)
    if key not in sd:
      missing.append(key)
      continue
    target = flat[path].get_value()  # an array, or a shape where only traced
    expected = _to_timm_array(leaf, np.zeros(target.shape, np.int8)).shape
    if sd[key].shape != expected:
      wrong_shape.append(f'{key}: expected {expected}, found {sd[key].shape}')
      hint = hint or _head_hint(model, key, expected, sd[key].shape)
      continue
    updates[path] = _from_timm_array(leaf, sd[key]).astype(target.dtype)
  unexpected = sorted(set(sd) - expected_keys)
  if missing or unexpected or wrong_shape:
    lines = [f'State dict does not fit {type(model).__name__}:{hint}']
    for title, items in (('missing', missing), ('unexpected', unexpected), ('wrong shape',
                                                                            wrong_shape)):
      if items:
        lines.append(f'  {len(items)} {title}:')
        lines += [f'    {item}' for item in items]
    raise StateDictMismatch('\n'.join(lines), [f'missing {key}' for key in missing]
                            + [f'unexpected {key}' for key in unexpected] + wrong_shape)
  for path, value in updates.items():
    flat[path].set_value(jax.numpy.asarray(value))
  return model


def _fit_pos_embed(model: nnx.Module, sd: dict) -> dict:
  """A ViT checkpoint trained at another image size, with its pos_embed resampled to the
  model's grid (timm's checkpoint_filter_fn does the same when it loads one)."""
  pos = sd.get('pos_embed')
  if (not isinstance(model, VisionTransformer) or pos is None or pos.ndim != 3
      or pos.shape[2] != model.pos_embed.shape[2] or pos.shape[1] == model.pos_embed.shape[1]):
    return sd
  try:
    pos = resample_abs_pos_embed(pos, model.grid_size, model.num_prefix_tokens)
  except ValueError:  # no square grid after the model's prefix: the mismatch report says so
    return sd
  return {**sd, 'pos_embed': pos}


def as_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch
    value = value.detach().cpu().float().numpy() if value.is_floating_point() \
        else value.detach().cpu().numpy()
  return np.asarray(value)


def write_timm_safetensors(model: nnx.Module, path: str) -> None:
  """Writes timm-named weights atomically: a killed write leaves no file at ``path``."""
  from safetensors.numpy import save_file
  with writes.replacing(path) as tmp:
    save_file(to_timm_state_dict(model), tmp)
