"""Our JAX models as teachers: one of our checkpoints or a Hub name (``hf-hub:ORG/NAME``),
for the save pass (``from_checkpoint``) and run inside the student's jitted step
(``online``: DeiT's online distillation, or the loss FPD approximates), which only a JAX
model can be: any other teacher is refused there by ``check_online``.

On an accelerator a large teacher (the paper's CLIP ViT-L/14) computes in bfloat16
(``distill.teacher_dtype``; its name then ends in ``@bfloat16``, so a store is never
resumed in another dtype), its weights replicated on every device, or sharded over them
when replicated they would take more than ``SHARD_ABOVE`` of one device's memory
(``distill.teacher_sharding``; ``SHARD_ABOVE`` says where the line falls).
"""
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import model_checkpoint
from tinyvit_jax import normalisation
from tinyvit_jax import target
from tinyvit_jax.data import pipeline
from tinyvit_jax.data.sources import class_index as class_index_lib
from tinyvit_jax.distill.teachers import record
from tinyvit_jax.models import WEIGHTS, hub
from tinyvit_jax.models import create_model

SHARDINGS = ('auto', 'replicated', 'sharded')
# Weights go sharded above this share of one device's memory: the rest is for the
# batch's activations, the augmentation and XLA's buffers. Weights are float32 (a
# bfloat16 teacher casts them at each matmul), so on a 16 GiB device the line is ~4 GiB,
# ~1B parameters: ViT-L/14 (304M), ViT-H/14 (632M) and, just, ViT-g/14 (1.01B) stay
# replicated, ViT-G/14 (1.8B) is sharded; on a TPU v2's 8 GiB cores ViT-H/14 is too.
SHARD_ABOVE = 0.25


def check_online(distill) -> str | None:
  """Why ``distill`` cannot run its teacher online inside the jitted step, or None."""
  adapter = distill.get('teacher_adapter', 'ours')
  if adapter != 'ours':
    return (f'distill.teacher_adapter={adapter!r} runs only in the save pass: an online '
            'teacher runs inside the jitted step, so it must be one of our checkpoints. '
            'Set distill.from_store=True (and stages save_logits, train), or convert the '
            'teacher with `python -m tinyvit_jax.convert`.')
  return None


def online(distill, aug, mesh, num_classes: int, meta: dict | None = None) -> tuple[Callable, list]:
  """``(teacher(leaves, images) -> logits, leaves)``: ``factory.make_teacher``'s teacher
  for the jitted step, its weights placed over ``mesh`` as the save pass places them
  (``place_weights``, ``distill.teacher_sharding``): the leaves carry their shardings into
  the step. With a class-index file the logits are gathered at the student's
  ``num_classes`` classes, so their softmax is renormalised over them. Given the
  checkpoint's ``meta`` (its model.json, a plan's), nothing is read and the leaves are
  abstract."""
  problem = check_online(distill)
  if problem:
    raise ValueError(problem)
  model, normalise = model_of(distill, aug, meta)
  graphdef, weights = nnx.split(model)
  weights, _ = place_weights(weights, mesh, distill.get('teacher_sharding', 'auto'))
  leaves, treedef = jax.tree.flatten(weights)
  class_index = distill.get('teacher_class_index', '')
  mapping = (class_index_lib.read_class_index(class_index, num_classes, model.num_classes)
             if class_index else None)
  record.check_class_count(distill.teacher, model.num_classes if mapping is None else len(mapping),
                           num_classes)

  def teacher(leaves, images):
    logits = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(normalise(images))
    logits = logits.astype(jnp.float32)  # a bfloat16 teacher's targets, in float32
    return logits if mapping is None else jnp.take(logits, mapping, axis=-1)

  return teacher, leaves


def model_of(distill, aug, meta: dict | None = None) -> tuple:
  """``(model, normalise)``: ``distill``'s teacher at its dtype and kwargs, in eval mode,
  and the map from ``aug``'s normalisation to its own; restored from its checkpoint, or,
  given the checkpoint's ``meta`` (its model.json, a plan's), shapes only."""
  return _restore(distill.teacher, *record.student_normalisation(aug), meta=meta,
                  **_dtype_override(distill.get('teacher_dtype', 'float32')),
                  **dict(distill.get('teacher_kwargs', None) or {}))


def place_weights(state, mesh: Mesh, sharding: str = 'auto'):
  """``(state on mesh's devices, sharded?)``: replicated, or each weight split along its
  largest dimension the device count divides (the others replicated), GSPMD gathering
  them in the jitted forward. 'auto' shards when the replicated weights would take more
  than ``SHARD_ABOVE`` of one device's memory (the target's, ``tinyvit_jax.target``: a
  CPU keeps no such figure, so there it replicates). ``state`` may be abstract
  (``jax.ShapeDtypeStruct``s, for a plan): it then comes back abstract, with shardings."""
  if sharding not in SHARDINGS:
    raise ValueError(f'distill.teacher_sharding={sharding!r}; expected one of {SHARDINGS}.')
  if sharding == 'auto':
    limit = target.current().device_memory
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    sharding = 'sharded' if limit and size > SHARD_ABOVE * limit else 'replicated'
  count = mesh.size
  if sharding == 'replicated' or count == 1:
    return target.place(state, NamedSharding(mesh, P())), False

  def spec(leaf) -> NamedSharding:
    dims = [d for d in np.argsort(leaf.shape, kind='stable')[::-1] if leaf.shape[d] % count == 0]
    if not dims:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(*['data' if d == dims[0] else None for d in range(leaf.ndim)]))

  return target.place(state, jax.tree.map(spec, state)), True


def from_checkpoint(directory: str, *, input_mean=normalisation.IMAGENET_MEAN,
                    input_std=normalisation.IMAGENET_STD, dtype='float32', sharding: str = 'auto',
                    **overrides) -> record.Teacher:
  """The teacher held in one of our model checkpoints, in eval mode, jitted.

  ``input_mean``/``input_std``: the student's normalisation; the teacher's own is its
  checkpoint's (``model_checkpoint.preprocess``). ``dtype``: the compute dtype
  (``target.compute_dtype``'s names; the weights stay as saved, the softmax is taken in
  float32 either way); any but float32 is appended to the name, as its rows differ.
  ``sharding``: ``place_weights``'s, over this process's devices. ``overrides`` go to
  ``model_checkpoint.restore_model``. A distilled DeiT gives the mean of its two heads,
  as at inference.
  """
  dtype = target.compute_dtype(dtype)
  model, normalise = _restore(directory, input_mean, input_std, **_dtype_override(dtype),
                              **overrides)
  # Restored weights sit on one device; the save pass spreads images over all local ones.
  forward, state = probabilities_fn(model, normalise, pipeline.data_mesh(jax.local_devices()),
                                    sharding)
  name = model_checkpoint.read_model_json(directory)['model']
  name = name if dtype == 'float32' else f'{name}@{dtype}'
  weights = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
  return record.Teacher(name, model_checkpoint.weights_hash(weights), model.num_classes,
                        lambda images: forward(state, images))


def probabilities_fn(model, normalise, mesh: Mesh, sharding: str = 'auto'):
  """``(forward(state, images) -> probabilities, state)``, jitted, the state placed over
  ``mesh`` by ``place_weights`` (abstract for an abstract model)."""
  graphdef, state = nnx.split(model)
  state, _ = place_weights(state, mesh, sharding)

  @jax.jit
  def forward(state, images):  # weights as an argument: as constants they would be compiled in
    logits = nnx.merge(graphdef, state)(normalise(images))
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)

  return forward, state


def _dtype_override(dtype) -> dict:
  """``restore_model``'s argument for compute dtype ``dtype``: none for float32, which
  is how the models are built by default."""
  dtype = target.compute_dtype(dtype)
  return {} if dtype == 'float32' else dict(dtype=jnp.dtype(dtype))


def _restore(directory: str, input_mean, input_std, meta: dict | None = None, **overrides):
  """Our checkpoint's model in eval mode, and the map from the student's normalisation to
  the teacher's own; given its ``meta`` (model.json's contents), the model that describes,
  shapes only (``nnx.eval_shape``), reading nothing."""
  if meta is not None:
    model = nnx.eval_shape(lambda: create_model(meta['model'], **{**meta['kwargs'], **overrides}))
  elif not hub.is_hub_name(directory) and not os.path.exists(directory):
    raise model_checkpoint.CheckpointError(
        f'Teacher checkpoint {os.path.abspath(directory)!r} does not exist. Create one '
        'from timm or official weights with `python -m tinyvit_jax.convert --model NAME '
        '--from WEIGHTS --out DIR`, or from a model of ours with '
        '`tinyvit_jax.model_checkpoint.save_model(DIR, model, NAME, **kwargs)`.')
  else:
    meta = model_checkpoint.read_model_json(directory)
    model = model_checkpoint.restore_model(directory, **overrides)
  model.eval()
  own = model_checkpoint.preprocess(meta)
  return model, record.renormalise(input_mean, input_std, own['mean'], own['std'])
