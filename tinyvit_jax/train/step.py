"""The jitted train and eval steps over a data-parallel mesh.

The whole training state (params, the rest of the model state: BatchNorm statistics and
RNG counters; optimiser state; optional EMA params) travels as one flat list of arrays.
jit flattens nnx/optax pytrees in Python on every call (~7 ms a step for TinyViT-5M's
state), a list in C++ (~0.6 ms), see ``benchmarks/models.py``. ``TrainState`` keeps the
tree structure to rebuild the pytrees inside the step and for checkpoints.

Sharding: the state is replicated and the batch split over the mesh's ``'data'`` axis.
GSPMD turns every mean over the batch, BatchNorm's statistics included, into a reduction
over the global batch, so 1 device and 8 devices compute the same step. The state's
buffers are donated.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import target
from tinyvit_jax.distill import targets
from tinyvit_jax.models import layers
from tinyvit_jax.train import optim

# (outputs, targets) -> loss; outputs: a model's logits, or a distilled DeiT's (cls, dist).
LossFn = Callable[[Any, dict], jax.Array]


@dataclasses.dataclass
class TrainState:
  """The model's graph (train and eval modes) and the state's tree structure. ``create``
  from an abstract model (``nnx.eval_shape``, a plan's) gives abstract leaves."""
  graphdef: Any
  eval_graphdef: Any
  treedef: Any
  leaves: list

  @classmethod
  def create(cls, model: nnx.Module, tx: optax.GradientTransformation, mesh,
             ema: bool = False) -> 'TrainState':
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def initial(params, rest):
      return dict(params=params, rest=rest, opt_state=tx.init(params),
                  ema=jax.tree.map(jnp.copy, params) if ema else None)

    abstract = isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
    state = jax.eval_shape(initial, params, rest) if abstract else initial(params, rest)
    leaves, treedef = jax.tree.flatten(state)
    return cls(graphdef, eval_graphdef, treedef, target.place(leaves, NamedSharding(mesh, P())))

  def tree(self, leaves=None) -> dict:
    return jax.tree.unflatten(self.treedef, self.leaves if leaves is None else leaves)

  def inference_model(self, use_ema: bool = False) -> nnx.Module:
    """The model in eval mode with the current (or EMA) params, e.g. for export."""
    state = self.tree()
    params = state['ema'] if use_ema and state['ema'] is not None else state['params']
    return nnx.merge(self.eval_graphdef, params, state['rest'])


def set_frozen_batchnorm(model: nnx.Module) -> None:
  """Fine-tuning's frozen BN: every BatchNorm normalises with, and keeps, its running
  statistics, even in train mode (its scale and bias still learn)."""
  for _, module in model.iter_modules():
    if isinstance(module, layers.BatchNorm):
      module.use_running_average = True


def make_train_step(state: TrainState, tx: optax.GradientTransformation, mesh, *, inputs: Callable,
                    loss_fn: LossFn, ema_decay: float = 0.0) -> Callable:
  """``step(leaves, batch, teacher_leaves) -> (leaves, metrics)``, jitted, state donated.

  ``inputs(batch, teacher_leaves) -> (images, targets)``: the step's images and what the
  loss compares the outputs with (``distill.student.make_inputs``; an online teacher runs
  there, on ``teacher_leaves``). ``loss_fn(outputs, targets)`` is the mean loss.
  """
  graphdef = state.graphdef

  def step(leaves, batch, teacher_leaves):
    tree = jax.tree.unflatten(state.treedef, leaves)
    images, targets = inputs(batch, teacher_leaves)

    def loss_of(params):
      model = nnx.merge(graphdef, params, tree['rest'], copy=True)
      loss = loss_fn(model(images), targets)
      _, _, rest = nnx.split(model, nnx.Param, ...)
      return loss, rest

    (loss, rest), grads = jax.value_and_grad(loss_of, has_aux=True)(tree['params'])
    updates, opt_state = tx.update(grads, tree['opt_state'], tree['params'])
    params = optax.apply_updates(tree['params'], updates)
    ema = tree['ema']
    if ema is not None:
      ema = optim.ema_update(ema, params, ema_decay)
    new = dict(params=params, rest=rest, opt_state=opt_state, ema=ema)
    return jax.tree.leaves(new), dict(loss=loss, grad_norm=optax.global_norm(grads))

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, donate_argnums=0, out_shardings=replicated)


def make_eval_step(state: TrainState, mesh, *, normalise: Callable,
                   use_ema: bool = False) -> Callable:
  """``evaluate(leaves, batch) -> sums`` of loss, top-1 and top-5 hits and examples,
  weighted by the batch's ``mask`` (the padded tail of the last batch counts zero); with
  the teacher's top-k rows as ``batch['teacher_values']`` and ``['teacher_indices']``,
  ``teacher_sums`` too, against the dense rows the store's rule rebuilds from them."""

  def evaluate(leaves, batch):
    tree = jax.tree.unflatten(state.treedef, leaves)
    params = tree['ema'] if use_ema and tree['ema'] is not None else tree['params']
    model = nnx.merge(state.eval_graphdef, params, tree['rest'])
    logits = model(normalise(batch['image'])).astype(jnp.float32)
    sums = topk_sums(logits, batch['label'], batch['mask'])
    if 'teacher_values' in batch:
      teacher_probs = targets.dense_targets(batch['teacher_values'], batch['teacher_indices'],
                                            logits.shape[-1])
      sums.update(teacher_sums(logits, teacher_probs, batch['mask']))
    return sums

  return jax.jit(evaluate, out_shardings=NamedSharding(mesh, P()))


def topk_sums(logits, labels, mask) -> dict:
  """Summed loss, top-1 and top-5 hits and example count over the unmasked rows."""
  weight = mask.astype(jnp.float32)
  k = min(5, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  hits = top == labels[:, None]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return dict(loss=jnp.sum(loss * weight), top1=jnp.sum(hits[:, 0] * weight),
              top5=jnp.sum(hits.any(axis=-1) * weight), count=jnp.sum(weight))


def teacher_sums(logits, teacher_probs, mask) -> dict:
  """Summed top-1 agreement with the teacher and KL(teacher || student) in nats over the
  unmasked rows; classes the teacher gives 0 add 0 (not 0 * log 0, nor 0 * -inf)."""
  weight = mask.astype(jnp.float32)
  agree = jnp.argmax(teacher_probs, axis=-1) == jnp.argmax(logits, axis=-1)
  positive = teacher_probs > 0
  log_ratio = jnp.log(jnp.where(positive, teacher_probs, 1.0)) - jax.nn.log_softmax(logits)
  kl = jnp.sum(jnp.where(positive, teacher_probs * log_ratio, 0.0), axis=-1)
  return dict(teacher_agreement=jnp.sum(agree * weight), teacher_kl=jnp.sum(kl * weight))
