"""FPD figures in one run: store size, save-pass speed, store-fed student step, read rate.

  python benchmarks/fpd.py                 # ~6 minutes on 2 shared cores, (e) 1 of them
  python benchmarks/fpd.py --quick         # smoke test: tiny sizes, 2 rounds

(a) Bytes per sample-epoch of our store (every file: chunks, headers, manifest) at k=10
    (C = 1,000) and k=100 (C = 21,841), against the official 4 + 4k bytes plus its key
    files (18 GB over 90 epochs x 13.2M images of the 21k release: ~15.2 B). Rows are
    teacher-like softmaxes (``tests/helpers/made_up_rows.py``); target <= 0.9x official.
(b) Save-pass images/s (``save_logits``: the loader's crop and flip, with RandAugment and
    erasing there too under ``--augment_on host`` (CPU runs) or on the device under
    ``device`` (accelerators); Mixup on the device; teacher, top-k, encode, write, mark
    done; one epoch of images held in memory, ``InMemorySource``), timed from its first
    teacher call to its return, against the same teacher's plain inference on the very
    same augmented batches, already on the device; target >= 0.95x. The whole call's
    rate, with its fixed costs (fingerprint, jit lowering, loader start), is shown too.
    The teacher (``--teacher``, default tiny_vit_21m: a teacher is the larger model) is
    random-init (``--teacher_kwargs``: constructor overrides, JSON), restored by
    ``jax_teacher.from_checkpoint``. The loader alone (host augmentation) is timed too:
    on a CPU machine it shares the cores with the teacher.
(c) Student train step (AdamW) from the store: the host hook's read and index check, the
    rows' transfer, ``targets.dense_targets`` (dense rebuild) and soft cross-entropy, against the
    same step on integer labels with cross-entropy; both on the same images, already on
    the device. Target overhead <= 5%.
(e) (b) with a ViT teacher (``--vit_teacher``, default CLIP ViT-B/16 at 224, the paper's
    kind of teacher in its own normalisation; ~10 img/s on 2 cores). The accelerator suite
    runs it with ViT-L/14.
(d) Store reads at k=10 in batches of 1,024 sequential rows: ``LogitStore.read`` alone
    and through the student's hook (``StoreTargets``, which also checks each row's
    example index); target >= 1M rows/s.

Arms alternate within each round, figures are medians over rounds (wall-clock on a
shared machine is noisy: compare within one run; (b) also gives images per CPU second of
this process, which other load disturbs less, and (c) times the store's own work apart). Compiles are excluded: a warm-up run
comes first, and a persistent compilation cache makes the save pass's re-jits cheap.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import order
from tinyvit_jax.data import pipeline
from tinyvit_jax.data.sources import synthetic
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.distill import targets
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.models import create_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests',
                                'helpers'))
import made_up_rows  # pylint: disable=wrong-import-position

OFFICIAL_KEY_BYTES = 18e9 / (90 * 13.2e6)  # the 21k release's key files per sample-epoch
STUDENT = 'tiny_vit_5m_224'
SEED = 0
PLAIN = order.Repeats()._asdict()  # no repeated augmentation
QUICK_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)  # --quick's ViT teacher


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--size_rows', type=int, default=65536, help='(a) rows at k=10')
  parser.add_argument('--teacher', default='tiny_vit_21m_224', help='(b) teacher model')
  parser.add_argument('--teacher_kwargs', type=json.loads, default={},
                      help='(b) its constructor overrides, JSON')
  parser.add_argument('--save_images', type=int, default=192, help='(b) images per round')
  parser.add_argument('--save_size', type=int, default=112, help='(b) image size')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--workers', type=int, default=0, help='(b) loader processes')
  parser.add_argument('--augment_on', default='host', choices=('host', 'device'),
                      help="(b) where RandAugment and erasing run: 'device' on accelerators")
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='(b, c) compute dtype of teacher and student; params stay float32')
  parser.add_argument('--student', default=STUDENT, help='(c) student model')
  parser.add_argument('--student_size', type=int, default=32, help='(c) image size')
  parser.add_argument('--student_steps', type=int, default=16, help='(c) steps per round')
  parser.add_argument('--read_rows', type=int, default=262144, help='(d) rows')
  parser.add_argument('--vit_teacher', default='vit_base_patch16_clip_224',
                      help='(e) the ViT teacher')
  parser.add_argument('--vit_size', type=int, default=224, help='(e) image size')
  parser.add_argument('--vit_images', type=int, default=64, help='(e) images per round')
  parser.add_argument('--vit_batch', type=int, default=16, help='(e) batch')
  parser.add_argument('--parts', default='abcde', help='which figures to measure')
  parser.add_argument('--json', default=os.path.join(os.path.dirname(__file__), 'out', 'fpd.json'))
  args = parser.parse_args(argv)
  if args.quick:
    args.rounds, args.size_rows, args.save_images, args.save_size = 2, 4096, 32, 32
    if args.teacher == parser.get_default('teacher'):  # a teacher named stays
      args.teacher = 'tiny_vit_5m_224'
    args.batch, args.student_size, args.student_steps, args.read_rows = 8, 32, 2, 8192
    args.vit_size, args.vit_images, args.vit_batch = 32, 32, 8
  args.vit_kwargs = QUICK_VIT if args.quick else {}
  return args


def median_summary(runs: list) -> dict:
  return dict(median=statistics.median(runs), min=min(runs), max=max(runs), runs=runs)


def dtype_kwargs(args) -> dict:
  return dict(dtype=jnp.bfloat16) if args.dtype == 'bfloat16' else {}


class InMemorySource:
  """``source``'s first ``distinct`` images, made once and held in memory, repeated over
  its length: reading costs nothing, so the loader's crop and the teacher are what is
  timed, and no disk or image generation limits the save pass."""

  def __init__(self, source, distinct: int = 64):
    self.num_classes, self.length = source.num_classes, len(source)
    self.records = [source[i] for i in range(min(distinct, len(source)))]

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict:
    record = self.records[index % len(self.records)]
    return dict(record, label=index % self.num_classes, index=int(index))


def teacher_rows(n: int, k: int, num_classes: int):
  """n teacher-like rows: 8,192 distinct ones tiled (making more at C = 21,841 is slow)."""
  distinct = min(n, 8192)
  values, indices = made_up_rows.teacher_like_topk(distinct, k, num_classes)
  tile = -(-n // distinct)
  return np.tile(values, (tile, 1))[:n], np.tile(indices, (tile, 1))[:n]


def student_fields(n: int, k: int, num_classes: int) -> dict:
  """The benchmark store's manifest fields a student shares (``manifest.STUDENT_FIELDS``)."""
  return dict(dataset_name='bench', dataset_size=n, dataset_fingerprint='', seed=SEED,
              augmentation={}, repeats=PLAIN, views_per_example=0, k=k, num_classes=num_classes)


def write_store(path: str, n: int, k: int, num_classes: int) -> store.LogitStore:
  """One done epoch of n rows whose example indices follow the epoch order of ``SEED``."""
  logits = store.LogitStore.create(
      path,
      dict(student_fields(n, k, num_classes), teacher_name='synthetic', teacher_checkpoint_hash=''))
  values, indices = teacher_rows(n, k, num_classes)
  with logits.epoch_writer(0) as writer:
    writer.write(0, values, indices, order.epoch_permutation(SEED, 0, n))
  logits.mark_epoch_done(0)
  return logits


def store_bytes(path: str) -> int:
  return sum(
      os.path.getsize(os.path.join(folder, name))
      for folder, _, names in os.walk(path)
      for name in names)


def bytes_per_sample_epoch(args, work: str) -> dict:
  """(a)"""
  report = {}
  for k, num_classes, n in ((10, 1000, args.size_rows), (100, 21841, args.size_rows // 4)):
    path = os.path.join(work, f'size_k{k}')
    write_store(path, n, k, num_classes)
    ours = store_bytes(path) / n
    official = 4 + 4 * k + OFFICIAL_KEY_BYTES
    report[f'k{k}'] = dict(rows=n, num_classes=num_classes, ours=ours, official=official,
                           ours_over_official=ours / official, ours_over_official_values_only=ours /
                           (4 + 4 * k))
    print(f'(a) k={k:3d}: {ours:6.1f} B/sample-epoch, official {official:.1f} '
          f'(4 + 4k + keys) -> {ours / official:.2f}x')
  return report


def save_pass_speed(args, work: str, label: str = '(b)') -> dict:
  """(b)"""
  size, n = args.save_size, args.save_images
  model = create_model(args.teacher, num_classes=1000, img_size=size, rngs=nnx.Rngs(0),
                       **args.teacher_kwargs)
  model_checkpoint.save_model(os.path.join(work, 'teacher'), model, args.teacher, num_classes=1000,
                              img_size=size, **args.teacher_kwargs)
  teacher = jax_teacher.from_checkpoint(os.path.join(work, 'teacher'), **dtype_kwargs(args))
  source = InMemorySource(synthetic.SyntheticSource(n, num_classes=10, image_size=size * 5 // 4))
  aug = dict(image_size=size, augment_on=args.augment_on)  # Mixup/CutMix on the device

  calls = []
  timed = teacher._replace(probabilities=lambda x: (calls.append(
      (time.perf_counter(), time.process_time())), teacher.probabilities(x))[1])

  def save(name: str) -> tuple[float, float]:
    """img/s from the first teacher call to the end; the whole call's; the first's per
    CPU second."""
    path = os.path.join(work, name)
    shutil.rmtree(path, ignore_errors=True)
    calls.clear()
    start = time.perf_counter()
    save_pass.save_logits(timed, source, dataset_name='bench', aug_config=aug, seed=SEED, epochs=1,
                          k=10, store_path=path, global_batch=args.batch, num_workers=args.workers,
                          progress=False)
    end = time.perf_counter()
    return (n / (end - calls[0][0]), n / (end - start), n / (time.process_time() - calls[0][1]))

  save('warmup')
  mesh = save_pass.local_mesh()
  device_augment = pipeline.make_device_augment(augment.make_train_augment(aug), mesh, args.batch,
                                                source.num_classes)
  host = augment.make_train_augment(aug).host
  images = [
      device_augment({name: b[name]
                      for name in ('image', 'key')}, labels=False)[0]
      for b in loader.position_batches(source, seed=SEED, epoch=0, positions=range(n),
                                       batch=args.batch, transform=host)
  ]
  jax.block_until_ready(images)

  def infer() -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready([teacher.probabilities(x) for x in images])
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)

  def load() -> float:
    start = time.perf_counter()
    for _ in loader.position_batches(source, seed=SEED, epoch=0, positions=range(n),
                                     batch=args.batch, transform=host, num_workers=args.workers):
      pass
    return n / (time.perf_counter() - start)

  infer()
  loaded = statistics.median([load() for _ in range(2)])
  runs = dict(save=[], save_whole_call=[], save_per_cpu_s=[], inference=[], inference_per_cpu_s=[])
  for r in range(args.rounds):
    for name, rate in zip(('save', 'save_whole_call', 'save_per_cpu_s'), save(f'round{r}')):
      runs[name].append(rate)
    for name, rate in zip(('inference', 'inference_per_cpu_s'), infer()):
      runs[name].append(rate)
  report = {arm: median_summary(rates) for arm, rates in runs.items()}
  report['save_over_inference'] = report['save']['median'] / report['inference']['median']
  report['save_over_inference_per_cpu_s'] = (report['save_per_cpu_s']['median']
                                             / report['inference_per_cpu_s']['median'])
  # Were loading and inference to share the cores with no overlap, 1 / (1 + t_load / t_infer).
  report['loader_alone'] = loaded
  report['serial_sum_bound'] = 1 / (1 + report['inference']['median'] / loaded)
  report['config'] = dict(teacher=args.teacher, teacher_kwargs=args.teacher_kwargs, image_size=size,
                          images=n, batch=args.batch, workers=args.workers, aug=aug,
                          dtype=args.dtype)
  print(f'{label} {args.teacher} save pass {report["save"]["median"]:.1f} img/s (whole call '
        f'with its fixed costs {report["save_whole_call"]["median"]:.1f}), plain inference '
        f'{report["inference"]["median"]:.1f} img/s -> {report["save_over_inference"]:.3f}x '
        f'(per CPU second {report["save_over_inference_per_cpu_s"]:.3f}x); '
        f'the loader alone {loaded:.0f} img/s, so {report["serial_sum_bound"]:.3f}x if the '
        'two shared the cores without overlap')
  return report


def vit_save_pass(args, work: str) -> dict:
  """(e): (b) with the ViT teacher's model, size, images and batch."""
  vit = argparse.Namespace(
      **dict(vars(args), teacher=args.vit_teacher, save_size=args.vit_size,
             save_images=args.vit_images, batch=args.vit_batch, teacher_kwargs=args.vit_kwargs))
  return save_pass_speed(vit, os.path.join(work, 'vit'), label='(e)')


def student_step(args, work: str) -> dict:
  """(c)"""
  size, batch, classes, k = args.student_size, args.batch, 1000, 10
  n = batch * args.student_steps
  write_store(os.path.join(work, 'student'), n, k, classes)
  hook = student.StoreTargets(os.path.join(work, 'student'), student_fields(n, k, classes))
  model = create_model(args.student, num_classes=classes, img_size=size, rngs=nnx.Rngs(1),
                       **dtype_kwargs(args))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.adamw(1e-3, weight_decay=0.05)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  permutation = order.epoch_permutation(SEED, 0, n)

  def make_step(loss_of):

    @jax.jit
    def step(params, opt_state, rest, images, targets):

      def loss(params):
        return loss_of(nnx.merge(graphdef, params, rest, copy=True)(images), targets)

      value, grads = jax.value_and_grad(loss)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, value

    return step

  label_step = make_step(
      lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
  store_step = make_step(lambda logits, rows: -jnp.mean(
      jnp.sum(
          targets.dense_targets(rows['teacher_values'], rows['teacher_indices'], classes) * jax.nn.
          log_softmax(logits), axis=-1)))

  def host_batch(s: int) -> dict:
    positions = np.arange(s * batch, (s + 1) * batch)
    return dict(epoch=np.zeros(batch, np.int64), position=positions, index=permutation[positions],
                label=permutation[positions] % classes)

  def one_step(arm: str, state: list, s: int) -> float:
    """One training step of ``arm`` from its host batch on; waits for the loss."""
    start = time.perf_counter()
    host = host_batch(s)
    if arm == 'store':
      rows = hook(host)
      on_device = dict(teacher_values=jax.device_put(rows['teacher_values']),
                       teacher_indices=jax.device_put(rows['teacher_indices']))
      state[0], state[1], loss = store_step(*state, rest, images, on_device)
    else:
      state[0], state[1], loss = label_step(*state, rest, images, jax.device_put(host['label']))
    float(loss)
    return time.perf_counter() - start

  states = {arm: [params, optimizer.init(params)] for arm in ('labels', 'store')}
  for arm, state in states.items():
    one_step(arm, state, 0)  # compiles
  runs = dict(labels=[], store=[])
  for _ in range(args.rounds):  # arms alternate step by step, so drift hits both alike
    times = dict(labels=[], store=[])
    for s in range(args.student_steps):
      for arm in (('labels', 'store') if s % 2 else ('store', 'labels')):
        times[arm].append(one_step(arm, states[arm], s))
    for arm in runs:
      runs[arm].append(statistics.median(times[arm]))

  # The store's own work, apart from the model: host read and index check, transfer,
  # dense rebuild and soft CE, against the labels' transfer and CE, on fixed logits.
  fixed_logits = jax.random.normal(jax.random.key(1), (batch, classes))
  label_loss = jax.jit(
      lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
  store_loss = jax.jit(lambda logits, rows: -jnp.mean(
      jnp.sum(
          targets.dense_targets(rows['teacher_values'], rows['teacher_indices'], classes) * jax.nn.
          log_softmax(logits), axis=-1)))

  def extra(arm: str, s: int) -> float:
    start = time.perf_counter()
    host = host_batch(s)
    if arm == 'store':
      rows = hook(host)
      float(
          store_loss(
              fixed_logits,
              dict(teacher_values=jax.device_put(rows['teacher_values']),
                   teacher_indices=jax.device_put(rows['teacher_indices']))))
    else:
      float(label_loss(fixed_logits, jax.device_put(host['label'])))
    return time.perf_counter() - start

  extras = {
      arm: statistics.median([extra(arm, s % args.student_steps) for s in range(200)])
      for arm in ('labels', 'store')
  }  # the median leaves out the compile
  report = {f'{arm}_step_s': median_summary(times) for arm, times in runs.items()}
  report['overhead'] = report['store_step_s']['median'] / report['labels_step_s']['median'] - 1
  report['extra_s'] = extras
  report['overhead_from_extras'] = ((extras['store'] - extras['labels'])
                                    / report['labels_step_s']['median'])
  report['config'] = dict(student=args.student, image_size=size, batch=batch, k=k,
                          num_classes=classes, optimizer='adamw', steps=args.student_steps,
                          dtype=args.dtype)
  print(f'(c) student step: labels {report["labels_step_s"]["median"] * 1e3:.1f} ms, from '
        f'the store {report["store_step_s"]["median"] * 1e3:.1f} ms -> overhead '
        f'{report["overhead"] * 100:+.1f}%; the store\'s own work '
        f'{extras["store"] * 1e3:.2f} ms vs the labels\' {extras["labels"] * 1e3:.2f} ms '
        f'-> {report["overhead_from_extras"] * 100:+.2f}% of a step')
  return report


def read_rate(args, work: str) -> dict:
  """(d)"""
  n, read_batch = args.read_rows, 1024
  path = os.path.join(work, 'read')
  logits = write_store(path, n, 10, 1000)
  hook = student.StoreTargets(path, student_fields(n, 10, 1000))
  permutation = order.epoch_permutation(SEED, 0, n)
  starts = range(0, n - read_batch + 1, read_batch)
  batches = [
      dict(epoch=np.zeros(read_batch, np.int64), position=np.arange(s, s + read_batch),
           index=permutation[s:s + read_batch]) for s in starts
  ]

  def read() -> float:
    reader = store.LogitStore.open(path)
    start = time.perf_counter()
    for s in starts:
      reader.read(0, s, read_batch)
    return len(starts) * read_batch / (time.perf_counter() - start)

  def through_hook() -> float:
    hook.store = store.LogitStore.open(path)  # a cold chunk cache, as for read()
    start = time.perf_counter()
    for b in batches:
      hook(b)
    return len(batches) * read_batch / (time.perf_counter() - start)

  del logits
  runs = dict(read=[], hook=[])
  for _ in range(args.rounds):
    runs['read'].append(read())
    runs['hook'].append(through_hook())
  report = {f'{arm}_rows_per_s': median_summary(rates) for arm, rates in runs.items()}
  report['config'] = dict(rows=n, k=10, num_classes=1000, batch=read_batch,
                          chunk_rows=store.DEFAULT_CHUNK_ROWS)
  print(f'(d) reads at k=10: LogitStore.read {report["read_rows_per_s"]["median"] / 1e6:.2f}M '
        f'rows/s, student hook {report["hook_rows_per_s"]["median"] / 1e6:.2f}M rows/s')
  return report


def main(argv=None):
  args = parse_args(argv)
  work = tempfile.mkdtemp(prefix='fpd_bench_')
  jax.config.update('jax_compilation_cache_dir', os.path.join(work, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  try:
    report = dict(config=dict(quick=args.quick, rounds=args.rounds, backend=jax.default_backend()))
    for part, name, measure in (('a', 'bytes', bytes_per_sample_epoch),
                                ('b', 'save_pass', save_pass_speed), ('c', 'student', student_step),
                                ('d', 'read', read_rate), ('e', 'vit_save_pass', vit_save_pass)):
      if part in args.parts:
        report[name] = measure(args, work)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(report, f, indent=1)
  print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
