"""tinyvit_jax: TinyViT and DeiT in JAX/Flax NNX, trained by fast pretraining distillation."""
__version__ = '0.1.0'
