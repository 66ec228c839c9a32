"""Train-time data pipelines on the same JPEGs: ours (grain + host augmentation) vs timm.

  python benchmarks/data.py                # 2 workers, 5 alternating rounds of 20 batches
  python benchmarks/data.py --quick        # smoke test: 64 images, 2 rounds of 2 batches
  python benchmarks/data.py --breakdown    # also: CPU ms per image of each stage, per arm

* Images: ``--images`` JPEGs of ``--height`` x ``--width`` (ImageNet's typical 375x500),
  smooth random content plus fine texture and noise, saved by PIL at quality 90 (~75 KB,
  near ImageNet's files), in 10 class folders under ``--cache`` (made once, reused).
* Ours: ``ImageFolderSource(decode=False)`` -> ``train_batches`` with ``--workers`` grain
  workers, transform ``make_train_augment(augment_on='host', ...)`` (crop, flip, RandAugment
  rand-m9-mstd0.5-inc1, normalise, erasing 0.25 'pixel'; bicubic), then the jitted device
  half (Mixup/CutMix) on each batch in the main process. ``--draft`` adds reduced-scale
  JPEG decoding.
* Ours, host side (``ours_host_side``): what the host CPUs do when an accelerator trains,
  ``augment_on='device'``: the loader decodes, crops and flips, and hands over uint8
  batches; RandAugment, erasing and Mixup/CutMix run in the jitted step on the
  accelerator, so this arm does not run them (``--breakdown`` times them on this CPU, to
  show why CPU-only runs use ``augment_on='host'``). Their cost on an accelerator is the
  issue's other figure (<= 10% of a train step), which needs a GPU.
* timm: ``create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
  re_prob=0.25, interpolation='bicubic', re_mode='pixel')`` (our recipe's, DeiT's, settings;
  timm's defaults would be bilinear and a constant erase) over torchvision's ImageFolder,
  torch DataLoader with the same workers, batch and shuffling. Pillow 13 raises for
  Posterize to 0 bits, which timm asks for at ~0.15% of images: the timm arm retries that
  image's transform with fresh draws (``_RetryPosterize``), as earlier Pillow gave black.
* ``--breakdown`` times each stage of both arms in this one process over
  ``--breakdown_images`` images (CPU time, best of 5 passes): where the time goes, without
  loaders or workers. RandAugment differs between arms by the ops each happened to draw.
* Each round times ``--steps`` batches after ``--skip`` untimed ones (worker start-up and
  prefetched batches), arms alternating. img/s is wall-clock; img/cpu-s divides the images by the CPU seconds
  (user + system) of the main process and its workers over the same window, the per-core
  figure that other load on a shared machine disturbs least.
"""
import argparse
import collections
import io
import json
import os
import statistics
import time

# Before torch loads OpenMP: spinning waits against other processes' threads slow torch
# 20-60x on a shared machine (see benchmarks/models.py).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import psutil
import timm
import torch
import torchvision
from PIL import Image
from timm.data import create_transform

from tinyvit_jax.data import augment
from tinyvit_jax.data import keys
from tinyvit_jax.data import loader
from tinyvit_jax.data.augment import host_mode
from tinyvit_jax.data.augment import mix
from tinyvit_jax.data.augment import pil_ops
from tinyvit_jax.data.sources import image_folder

ARMS = ('ours', 'timm', 'ours_host_side')
MIN_WINDOW_CPU_S = 0.2
CLASSES = 10


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=1024)
  parser.add_argument('--height', type=int, default=375)
  parser.add_argument('--width', type=int, default=500)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--steps', type=int, default=20, help='timed batches per round')
  parser.add_argument('--skip', type=int, default=12,
                      help='untimed batches first: worker start-up and prefetched batches')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--draft', action='store_true', help='ours: reduced-scale JPEG decode')
  parser.add_argument('--breakdown', action='store_true',
                      help='also time each stage of both arms, in one process')
  parser.add_argument('--breakdown_images', type=int, default=128)
  parser.add_argument('--cache', default='benchmarks/out/data_jpegs')
  parser.add_argument('--json', default='benchmarks/out/data.json')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: 64 images, batch 8, 2 rounds of 2 batches')
  args = parser.parse_args(argv)
  if args.quick:
    args.images, args.batch, args.steps, args.rounds, args.skip = 64, 8, 2, 2, 2
    args.breakdown_images = 8
    args.cache += '_quick'
  return args


def make_jpegs(root: str, count: int, height: int, width: int) -> str:
  """``count`` JPEGs in ``root/<class>/``, made once per (count, size)."""
  folder = os.path.join(root, f'{count}_{height}x{width}')
  done = os.path.join(folder, 'done')
  if os.path.exists(done):
    return folder
  rng = np.random.default_rng(0)
  for i in range(count):
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    fine = rng.integers(0, 256, (height // 3 + 1, width // 3 + 1, 3), dtype=np.uint8)
    pixels = (0.7 * np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
              + 0.3 * np.asarray(Image.fromarray(fine).resize(
                  (width, height), Image.BILINEAR)) + rng.normal(0, 6, (height, width, 3)))
    path = os.path.join(folder, f'class_{i % CLASSES}', f'{i:06d}.jpg')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
  open(done, 'w').close()
  return folder


class _RetryPosterize:
  """timm's transform, drawn again for an image whose draw raised Pillow 13's 0-bit
  Posterize ValueError."""

  def __init__(self, transform):
    self.transform = transform

  def __call__(self, image):
    while True:
      try:
        return self.transform(image)
      except ValueError as error:
        if 'bits' not in str(error):
          raise


def ours_batches(args, folder, augment_on: str = 'host'):
  pipeline = augment.make_train_augment(image_size=args.size, augment_on=augment_on,
                                        jpeg_draft=args.draft)
  device = jax.jit(pipeline.device)
  source = image_folder.ImageFolderSource(folder, decode=False)
  batches = loader.train_batches(source, seed=0, global_batch=args.batch, transform=pipeline.host,
                                 num_workers=args.workers)
  try:
    for batch in batches:
      if augment_on == 'device':  # the rest runs on the accelerator, not on these cores
        yield batch
        continue
      targets = mix.smooth_one_hot(batch['label'], CLASSES, 0.1)
      yield jax.block_until_ready(device(jnp.asarray(batch['image']), batch['key'], targets))
  finally:
    batches.close()


def timm_batches(args, folder):
  transform = create_transform(args.size, is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
                               re_prob=0.25, interpolation='bicubic', re_mode='pixel')
  dataset = torchvision.datasets.ImageFolder(folder, transform=_RetryPosterize(transform))
  data = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                     num_workers=args.workers, drop_last=True,
                                     multiprocessing_context='spawn' if args.workers else None)
  while True:
    yield from data


def _best_cpu_ms(run, images: int, passes: int = 5) -> float:
  """CPU ms per image of ``run()`` over ``images`` images, the best of ``passes``."""
  best = float('inf')
  for _ in range(passes):
    start = time.process_time()
    run()
    best = min(best, time.process_time() - start)
  return 1e3 * best / images


def breakdown(args, folder) -> dict:
  """CPU ms per image of each stage of both arms, in this process, on the same images."""
  n = args.breakdown_images
  source = image_folder.ImageFolderSource(folder, decode=False)
  records = [source[i] for i in range(n)]
  key_data = np.stack([jax.random.key_data(keys.sample_key(0, 0, i)) for i in range(n)])
  pipeline = augment.make_train_augment(image_size=args.size, augment_on='host')
  host = pipeline.host
  settings = tuple(sorted(host.rand_augment.items()))
  draw = lambda k: host_mode.draw(k, size=args.size, rand_augment=settings, color_jitter=host.
                                  color_jitter, erase_prob=host.erase_prob)
  decoded = [np.asarray(Image.open(io.BytesIO(r['image'])).convert('RGB')) for r in records]
  crops = [host.crop.crop(image, k) for image, k in zip(decoded, key_data)]
  draws = [draw(k) for k in key_data]
  names = host.rand_augment['ops']

  def rand_augment():
    return [
        np.asarray(pil_ops.rand_augment(image, drawn['ops'], drawn['arguments'], names, host.fill))
        for image, drawn in zip(crops, draws)
    ]

  augmented = rand_augment()

  def pack_and_erase():
    for pixels, drawn in zip(augmented, draws):
      pil_ops.random_erase(host_mode.pack(pixels), drawn['erase'])

  examples = [host(r, k) for r, k in zip(records[:args.batch], key_data)]
  batch = dict(image=np.stack([example['image'] for example in examples]),
               key=key_data[:args.batch])
  device = jax.jit(pipeline.device)
  targets = mix.smooth_one_hot(np.arange(args.batch) % CLASSES, CLASSES, 0.1)
  run_device = lambda: jax.block_until_ready(
      device(jnp.asarray(batch['image']), batch['key'], targets))
  run_device()
  accelerator = augment.make_train_augment(image_size=args.size, augment_on='device')
  accelerator_images = np.stack(
      [accelerator.host(r, k)['image'] for r, k in zip(records[:args.batch], key_data)])
  accelerator_device = jax.jit(accelerator.device)
  run_accelerator_half = lambda: jax.block_until_ready(
      accelerator_device(jnp.asarray(accelerator_images), batch['key'], targets))
  run_accelerator_half()
  ours = collections.OrderedDict([
      ('decode',
       _best_cpu_ms(lambda: [Image.open(io.BytesIO(r['image'])).convert('RGB') for r in records],
                    n)),
      ('crop + resize + flip',
       _best_cpu_ms(lambda: [host.crop.crop(image, k) for image, k in zip(decoded, key_data)], n)),
      ('draws (one jitted call)', _best_cpu_ms(lambda: [draw(k) for k in key_data], n)),
      ('RandAugment', _best_cpu_ms(rand_augment, n)),
      ('pack + erasing noise', _best_cpu_ms(pack_and_erase, n)),
      ('whole host transform',
       _best_cpu_ms(lambda: [host(r, k) for r, k in zip(records, key_data)], n)),
      ('device half (asarray, unpack, normalise, Mixup/CutMix)',
       _best_cpu_ms(run_device, args.batch)),
      ("augment_on='device': host transform (decode, crop, flip)",
       _best_cpu_ms(lambda: [accelerator.host(r, k) for r, k in zip(records, key_data)], n)),
      ("augment_on='device': its device half run by XLA on this CPU",
       _best_cpu_ms(run_accelerator_half, args.batch))
  ])

  transform = create_transform(args.size, is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
                               re_prob=0.25, interpolation='bicubic', re_mode='pixel')
  timm_stages = collections.OrderedDict([
      ('decode',
       _best_cpu_ms(lambda: [Image.open(io.BytesIO(r['image'])).convert('RGB') for r in records],
                    n))
  ])
  torch.manual_seed(0)
  stages = [('', [Image.fromarray(image) for image in decoded])]
  for step in transform.transforms:
    inputs = stages[-1][1]
    apply = lambda step=step, inputs=inputs: [_RetryPosterize(step)(x) for x in inputs]
    timm_stages[type(step).__name__] = _best_cpu_ms(apply, n)
    stages.append((type(step).__name__, apply()))
  tensors = stages[-1][1]
  timm_stages['collate'] = _best_cpu_ms(lambda: torch.utils.data.default_collate(tensors), n)
  return dict(ours=ours, timm=timm_stages)


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and its live descendants."""
  me = psutil.Process()
  total = 0.0
  for process in [me] + me.children(recursive=True):
    try:
      times = process.cpu_times()
    except psutil.NoSuchProcess:
      continue
    total += times.user + times.system
  return total


def time_round(batches, args) -> dict:
  """Images/s and images per CPU second over ``args.steps`` batches after ``args.skip``.

  The skipped batches cover worker start-up and drain what the workers prefetched
  meanwhile (up to 2 per worker in both loaders), so the window sees the steady rate. The
  window also spans at least ``MIN_WINDOW_CPU_S``: CPU time is counted in 10 ms ticks, and
  a few fast batches (``--quick``) can fall within one.
  """
  for _ in range(args.skip):
    next(batches)
  cpu, start = _cpu_seconds(), time.perf_counter()
  steps = 0
  while steps < args.steps or _cpu_seconds() - cpu < MIN_WINDOW_CPU_S:
    next(batches)
    steps += 1
  cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - start
  batches.close()
  images = steps * args.batch
  return dict(img_per_s=images / wall, img_per_cpu_s=images / cpu)


def summary(runs: list[float]) -> dict:
  return dict(median=statistics.median(runs), min=min(runs), max=max(runs), runs=runs)


def main(argv=None):
  args = parse_args(argv)
  torch.set_num_threads(1)
  folder = make_jpegs(args.cache, args.images, args.height, args.width)
  make = dict(ours=ours_batches, timm=timm_batches,
              ours_host_side=lambda *a: ours_batches(*a, augment_on='device'))
  runs = {arm: [] for arm in ARMS}
  for round_index in range(args.rounds):
    for arm in ARMS:
      runs[arm].append(time_round(make[arm](args, folder), args))
      print(
          f'round {round_index} {arm}: {runs[arm][-1]["img_per_s"]:.1f} img/s, '
          f'{runs[arm][-1]["img_per_cpu_s"]:.1f} img/cpu-s', flush=True)
  results = {
      arm: {
          metric: summary([run[metric]
                           for run in runs[arm]])
          for metric in ('img_per_s', 'img_per_cpu_s')
      } for arm in ARMS
  }
  ratios, host_side_ratios = ({
      metric: results[arm][metric]['median'] / results['timm'][metric]['median']
      for metric in ('img_per_s', 'img_per_cpu_s')
  }
                              for arm in ('ours', 'ours_host_side'))
  print(f'\n{args.images} JPEGs {args.width}x{args.height} -> {args.size}, batch '
        f'{args.batch}, {args.workers} workers, {args.rounds} rounds of {args.steps} batches '
        f'(median, min-max)')
  print(f'{"arm":<14} {"img/s":>24} {"img/cpu-s":>24} {"img/s per worker":>17}')
  for arm in ARMS:
    cells = [
        f'{r["median"]:8.1f} ({r["min"]:.1f}-{r["max"]:.1f})'
        for r in (results[arm]['img_per_s'], results[arm]['img_per_cpu_s'])
    ]
    per_worker = results[arm]['img_per_s']['median'] / max(args.workers, 1)
    print(f'{arm:<14} {cells[0]:>24} {cells[1]:>24} {per_worker:17.1f}')
  print(f'ours/timm: {ratios["img_per_s"]:.2f}x img/s, {ratios["img_per_cpu_s"]:.2f}x '
        'img/cpu-s')
  print(f'ours_host_side/timm (host CPUs of an accelerator run): '
        f'{host_side_ratios["img_per_s"]:.2f}x img/s, '
        f'{host_side_ratios["img_per_cpu_s"]:.2f}x img/cpu-s')
  # Each round of an arm against the timm round next to it: slow drifts in the machine's
  # load cancel in the pair.
  round_ratios, host_side_round_ratios = ({
      metric: summary([o[metric] / t[metric]
                       for o, t in zip(runs[arm], runs['timm'])])
      for metric in ('img_per_s', 'img_per_cpu_s')
  }
                                          for arm in ('ours', 'ours_host_side'))
  for arm, by_round in (('ours', round_ratios), ('ours_host_side', host_side_round_ratios)):
    print(f'{arm}/timm round by round, median (min-max): '
          + ', '.join(f'{r["median"]:.2f}x ({r["min"]:.2f}-{r["max"]:.2f}) {metric}'
                      for metric, r in by_round.items()))
  stages = None
  if args.breakdown:
    stages = breakdown(args, folder)
    for arm, stage_ms in stages.items():
      print(f'\n{arm}: CPU ms per image, best of 5 passes over {args.breakdown_images} '
            'images, one process')
      for name, ms in stage_ms.items():
        print(f'  {name:<58} {ms:6.3f}')
  report = dict(
      config=vars(args), results=results, ours_over_timm=ratios,
      ours_host_side_over_timm=host_side_ratios, ours_over_timm_by_round=round_ratios,
      ours_host_side_over_timm_by_round=host_side_round_ratios, breakdown=stages,
      environment=dict(cpus=len(os.sched_getaffinity(0)), load_average=os.getloadavg(),
                       jax=jax.__version__, torch=torch.__version__, timm=timm.__version__,
                       pillow=Image.__version__, omp_wait_policy=os.environ['OMP_WAIT_POLICY']))
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
