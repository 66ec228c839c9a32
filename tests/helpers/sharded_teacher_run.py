"""A small CLIP-normalised ViT teacher, replicated and sharded over this process's
devices (run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``), in the save
pass and online (in a jitted step, as the student's): prints, as JSON, how far apart
their probabilities are, how the weights were placed, and whether 'auto' shards weights
just above and just below the line (a device memory faked).

  python tests/helpers/sharded_teacher_run.py DIR
"""
import json
import sys

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import model_checkpoint
from tinyvit_jax import target
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.models import create_model

NAME = 'vit_base_patch16_clip_224'
KWARGS = dict(num_classes=16, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def save(directory: str) -> None:
  model = create_model(NAME, rngs=nnx.Rngs(0), **KWARGS)
  model_checkpoint.save_model(directory, model, NAME, **KWARGS)


def main(directory: str) -> None:
  save(directory)
  images = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
  found = {}
  for sharding in ('replicated', 'sharded'):
    made = jax_teacher.from_checkpoint(directory, sharding=sharding)
    found[sharding] = np.asarray(made.probabilities(images))
  mesh = pipeline.data_mesh(jax.local_devices())
  batch = jax.device_put(images, NamedSharding(mesh, P('data')))  # as the step's images
  online, online_replicated = {}, {}
  for sharding in ('replicated', 'sharded'):
    distill = ml_collections.ConfigDict(dict(teacher=directory, teacher_sharding=sharding))
    forward, leaves = jax_teacher.online(distill, None, mesh, KWARGS['num_classes'])
    online[sharding] = np.asarray(jax.nn.softmax(jax.jit(forward)(leaves, batch)))
    online_replicated[sharding] = [
        sum(leaf.sharding.is_fully_replicated for leaf in leaves),
        len(leaves)
    ]
  state = nnx.split(model_checkpoint.restore_model(directory))[1]
  placed, sharded = jax_teacher.place_weights(state, mesh, 'sharded')
  qkv = placed['blocks'][0]['attn']['qkv']['kernel']
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  auto = {}
  for name, limit in (('above', size / jax_teacher.SHARD_ABOVE - 8),
                      ('below', size / jax_teacher.SHARD_ABOVE + 8)):
    with target.compiling_for(target.Target('cpu', device_memory=limit)):  # a device this size
      auto[name] = jax_teacher.place_weights(state, mesh, 'auto')[1]
  print(
      json.dumps(
          dict(
              devices=mesh.size,
              max_abs_diff=float(np.abs(found['sharded'] - found['replicated']).max()),
              online_max_abs_diff=float(np.abs(online['sharded'] - online['replicated']).max()),
              online_vs_save_pass=float(np.abs(online['replicated'] - found['replicated']).max()),
              online_replicated_leaves=online_replicated, sharded=sharded,
              auto_sharded_when_weights_are=auto, qkv_shape=list(qkv.shape), qkv_spec=[
                  str(s) for s in qkv.sharding.spec
              ], qkv_shard_shape=list(qkv.addressable_shards[0].data.shape), replicated_leaves=sum(
                  leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed)))))


if __name__ == '__main__':
  main(sys.argv[1])
