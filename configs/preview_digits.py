"""The embedded digits as a training run sees them: 32x32 crops with the DeiT/TinyViT
augmentation (RandAugment, erasing, Mixup/CutMix pairs).

  python -m tinyvit_jax.preview --config=configs/preview_digits.py --epoch 0 \
      --count 16 --out grid.png --npy grid.npz

``configs/preview_digits.py:64`` previews 64x64 crops; flags such as
``--config.aug.mixup_alpha=0 --config.aug.cutmix_alpha=0`` override one setting.

Schema (the training recipes extend it):
- data.source, data.args: a source by name and its constructor's arguments
  (``tinyvit_jax/data/sources/``);
- data.seed: the seed of every epoch order and sample key;
- data.label_smoothing: of the one-hot targets, before Mixup/CutMix mixes them;
- data.num_repeats, data.repeat_stride (1 and 64 if left out): repeated
  augmentation (``tinyvit_jax/data/order.py``), e.g. ``--config.data.num_repeats=3
  --config.data.repeat_stride=4`` shows each example's three views, captioned ``i r1``;
- aug: ``augment.make_train_augment``'s settings; those left out keep its defaults.
"""
import ml_collections


def get_config(arg=None):
  size = int(arg or 32)
  config = ml_collections.ConfigDict()
  # Digits are 8x8: upsample to twice the crop size, so crops are resampled down, as photos.
  config.data = dict(source='digits', args=dict(split='train', image_size=2 * size), seed=0,
                     label_smoothing=0.1, num_repeats=1, repeat_stride=64)
  config.aug = dict(image_size=size, rand_augment='rand-m9-mstd0.5-inc1', erase_prob=0.25,
                    mixup_alpha=0.8, cutmix_alpha=1.0)
  return config
