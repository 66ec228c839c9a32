"""A run's FPD save stage: its teacher over every epoch of its augmented images (or, for a
bounded store, over its ``distill.views_per_example`` first epochs), into its store, then
checked against the teacher (``verify``) when the config asks.

  python -m tinyvit_jax.main --config=RECIPE --workdir=DIR --mode=save_logits
"""
from tinyvit_jax.data import order
from tinyvit_jax.data import sources
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill import verify
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.distill.teachers import torch_teacher


def run(config, workdir: str) -> dict:
  """Saves (or resumes saving) the run's store; returns where, and verify's figures."""
  teacher = factory.make_teacher(config.distill, config.aug, config.num_classes)
  path = store.location(config.distill, workdir)
  source = sources.from_config(config.data, 'train')
  views = config.distill.views_per_example
  epochs = views or config.epochs  # a bounded store's views are its first epochs
  save_pass.save_logits(teacher, source, dataset_name=config.data.name or config.data.source,
                        aug_config=config.aug, seed=config.seed, epochs=epochs, k=config.distill.k,
                        store_path=path, global_batch=config.batch_size,
                        num_workers=config.data.num_workers, repeats=order.repeats_of(config.data),
                        views=views)
  result = dict(store=path, epochs=epochs)
  if config.distill.verify_rows:
    result.update(
        verify.verify(path, teacher, source, sample=config.distill.verify_rows, seed=config.seed,
                      min_top1_agreement=config.distill.verify_min_top1,
                      max_mean_abs_diff=config.distill.verify_max_mean_abs_diff))
  del teacher
  torch_teacher.release_gpu_memory()
  return result
