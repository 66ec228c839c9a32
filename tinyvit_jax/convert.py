"""Weights both ways between our models and timm / official (Cream) PyTorch checkpoints.

The mapping itself is ``models.timm_weights``; files are read, and Cream's and OpenAI
CLIP's names renamed to timm's, by ``torch_state_dicts``.

CLI::

  python -m tinyvit_jax.convert --model tiny_vit_5m_224 --from ckpt.pth --out DIR
  python -m tinyvit_jax.convert --from hf-hub:timm/tiny_vit_5m_224.dist_in22k --out DIR
  python -m tinyvit_jax.convert --from DIR --to-timm out.safetensors
  python -m tinyvit_jax.convert --from WORKDIR/export --to-timm FOLDER [--push ORG/NAME]

``--to-timm FOLDER`` (any name not ending in .safetensors) writes a Hub repo in timm's
layout (``models.hub.write_folder``), with a model card from the run's ``summary.json``
where there is one; ``--push`` uploads it.
"""
import argparse
import json
import os
import sys

from tinyvit_jax import compile_cache
from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax import torch_state_dicts
from tinyvit_jax import writes
from tinyvit_jax.models import create_model, hub
from tinyvit_jax.models.timm_weights import load_timm_state_dict, write_timm_safetensors


def _parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m tinyvit_jax.convert', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', help='registered model name of a --from FILE, e.g. tiny_vit_5m_224')
  p.add_argument(
      '--from', dest='src', required=True,
      help='timm/Cream .pth/.safetensors file, an hf-hub:ORG/NAME[@REV] repo, or '
      '(with --to-timm) our checkpoint dir')
  p.add_argument('--out', help='output directory for our (orbax) model checkpoint')
  p.add_argument(
      '--to-timm', help='write a timm-named .safetensors file, or a Hub folder '
      'in timm\'s layout, instead')
  p.add_argument(
      '--push', metavar='ORG/NAME', help='with --to-timm FOLDER: upload it to this '
      'Hub model repo (huggingface_hub\'s token: `hf auth login` or HF_TOKEN)')
  p.add_argument(
      '--allow-pickle', action='store_true',
      help='read an hf-hub repo that has only a pickled pytorch_model.bin '
      '(torch.load(weights_only=True))')
  p.add_argument('--num-classes', type=int, default=None,
                 help='classifier size; default: read from the checkpoint head')
  p.add_argument(
      '--img-size', type=int, default=None,
      help="input size to build the model at; default: the name's. A ViT's "
      'pos_embed is resampled to it')
  args = p.parse_args(argv)
  if bool(args.out) == bool(args.to_timm):
    p.error('give exactly one of --out (timm/Cream -> ours) or --to-timm (ours -> timm)')
  if args.out and not args.model and not hub.is_hub_name(args.src):
    p.error('--from FILE needs --model NAME (an hf-hub: repo names its own)')
  if args.push and (not args.to_timm or args.to_timm.endswith('.safetensors')):
    p.error('--push uploads a --to-timm FOLDER')
  return args


def _head_classes(sd: dict) -> int | None:
  for key in ('head.fc.weight', 'head.weight'):
    if key in sd:
      return int(sd[key].shape[0])
  return None


def model_card(directory: str, meta: dict, repo: str = 'ORG/NAME') -> str:
  """A Hub model card for the checkpoint ``directory``: its model, and where the run's
  ``summary.json`` (beside the export, or one level up) has it, the recipe's figures."""
  lines = [
      '---', 'library_name: timm', 'tags: [image-classification, timm, tinyvit_jax]', '---',
      f'# {meta["model"]}', '',
      f'Trained with tinyvit_jax; `timm.create_model("hf-hub:{repo}", pretrained=True)` '
      'loads it.', ''
  ]
  run_dir = os.path.dirname(os.path.abspath(directory))
  for path, run in ((os.path.join(run_dir,
                                  'summary.json'), ''), (os.path.join(os.path.dirname(run_dir),
                                                                      'summary.json'),
                                                         os.path.basename(run_dir))):
    if os.path.isfile(path):
      with open(path) as f:
        rows = [row for row in json.load(f) if row.get('run') in (run, meta['model'])]
      if rows:
        lines += [
            '| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0]),
            '| ' + ' | '.join(str(value) for value in rows[0].values()) + ' |', ''
        ]
        break
  preprocess = meta.get('metadata', {}).get('preprocess')
  if preprocess:
    lines.append(f'Eval preprocessing: {json.dumps(preprocess)}')
  return '\n'.join(lines) + '\n'


def run(argv=None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  compile_cache.enable()
  # Only a Hub repo can hold a pickle that needs asking for.
  source = dict(allow_pickle=True) if args.allow_pickle and hub.is_hub_name(args.src) else {}
  try:
    if args.to_timm:
      model = model_checkpoint.restore_model(args.src, **source)
      if args.to_timm.endswith('.safetensors'):
        write_timm_safetensors(model, args.to_timm)
      else:
        meta = model_checkpoint.read_model_json(args.src)
        hub.write_folder(model, meta['model'], meta['kwargs'], args.to_timm,
                         metadata=meta.get('metadata'),
                         card=model_card(args.src, meta, args.push or 'ORG/NAME'))
      print(f'Wrote timm weights of {args.src} to {args.to_timm}')
      if args.push:
        url = hub.push_folder(args.to_timm, args.push)
        print(f'Uploaded {args.to_timm} to {args.push}: {url}')
      return 0
    if hub.is_hub_name(args.src):
      meta = model_checkpoint.read_model_json(args.src)
      model = model_checkpoint.restore_model(args.src, **source)
      name, kwargs, metadata = meta['model'], meta['kwargs'], meta['metadata']
    else:
      sd = torch_state_dicts.read_state_dict(args.src)
      name = args.model
      kwargs = dict(num_classes=args.num_classes or _head_classes(sd) or 1000)
      if args.img_size:
        kwargs['img_size'] = args.img_size
      model = create_model(name, **kwargs)
      load_timm_state_dict(model, sd)
      # A teacher carries the input normalisation it needs (model_checkpoint.preprocess).
      metadata = dict(preprocess=model_checkpoint.registered_preprocess(name, kwargs))
    model_checkpoint.save_model(args.out, model, name, **kwargs, metadata=metadata)
    print(f'Wrote {name} ({kwargs["num_classes"]} classes, inputs normalised with mean '
          f'{metadata["preprocess"]["mean"]} and std {metadata["preprocess"]["std"]}) to '
          f'{args.out}')
    return 0
  except writes.DiskFull as error:  # the writers' fix names --workdir; here the output flag
    return errors.refuse(writes.DiskFull(error.path, move='--to-timm' if args.to_timm else '--out'),
                         status=2)
  except errors.UserError as error:
    return errors.refuse(error, status=2)


if __name__ == '__main__':
  sys.exit(run())
