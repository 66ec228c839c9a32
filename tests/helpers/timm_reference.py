"""timm reference models for the parity tests: random init, then every weight and
statistic perturbed so that zero-initialised tensors (attention biases, the last BN of
each MBConv, BN running stats) are exercised too; and how ours is run and compared."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

# Our registry names that timm lacks are timm's 224 model at another img_size.
_TIMM_ALIASES = {
    'deit_tiny_patch16_384': 'deit_tiny_patch16_224',
    'deit_small_patch16_384': 'deit_small_patch16_224',
    'deit_tiny_distilled_patch16_384': 'deit_tiny_distilled_patch16_224',
    'deit_small_distilled_patch16_384': 'deit_small_distilled_patch16_224',
}


def create_timm_model(name: str, *, seed: int = 0, **kwargs):
  torch.manual_seed(seed)
  model = _build(name, **kwargs)
  perturb(model, seed)
  return model


def timm_zeros_state_dict(name: str, **kwargs) -> dict:
  """timm's keys and shapes for ``name``, as zeros: the model is built on torch's meta
  device, so a layout check allocates no initialised weights."""
  with torch.device('meta'):
    model = _build(name, **kwargs)
  return {k: np.zeros(v.shape, np.float32) for k, v in model.state_dict().items()}


def _build(name: str, **kwargs):
  import timm
  kwargs.setdefault('num_classes', 1000)  # timm's TinyViT defaults to the 21k head
  timm_name = _TIMM_ALIASES.get(name, name)
  if timm_name != name:
    kwargs.setdefault('img_size', 384)
  if name.startswith('tiny_vit'):
    kwargs.pop('img_size', None)  # timm's TinyViT takes any input size as it is
  return timm.create_model(timm_name, pretrained=False, **kwargs)


@torch.no_grad()
def perturb(model, seed: int):
  g = torch.Generator().manual_seed(seed + 1)
  for name, p in model.named_parameters():
    scale = 0.5 if 'attention_biases' in name else 0.05
    p.add_(scale * torch.randn(p.shape, generator=g))
  for name, b in model.named_buffers():
    if name.endswith('running_mean'):
      b.copy_(0.1 * torch.randn(b.shape, generator=g))
    elif name.endswith('running_var'):
      b.copy_(0.5 + torch.rand(b.shape, generator=g))


def timm_logits(model, images_nhwc: np.ndarray):
  """Runs timm on NHWC numpy images; returns numpy logits (a tuple for two heads)."""
  with torch.no_grad():
    out = model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous())
  if isinstance(out, tuple):
    return tuple(o.numpy() for o in out)
  return out.numpy()


def jit_forward(model, images):
  """Runs the model under jit, as training and inference do."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(images))


def assert_logits_close(ours, theirs):
  ours = ours if isinstance(ours, tuple) else (ours,)
  theirs = theirs if isinstance(theirs, tuple) else (theirs,)
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    a = np.asarray(a)
    assert a.shape == b.shape
    bound = 1e-4 * max(1.0, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= bound, (np.abs(a - b).max(), bound)
