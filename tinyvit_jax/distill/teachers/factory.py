"""The teacher a config names, of whichever kind: the one place that knows every adapter,
so neither kind knows the other (``jax_teacher``, ``torch_teacher``)."""
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.distill.teachers import record
from tinyvit_jax.distill.teachers import torch_teacher

ADAPTERS = ('ours', 'timm', 'torch')


def make_teacher(distill, aug=None, num_classes: int | None = None) -> record.Teacher:
  """The teacher a config's ``distill`` section names (keys below), over ``aug``'s
  normalisation (``aug.mean``/``aug.std``, default ImageNet's), for a student of
  ``num_classes`` classes if given (checked).

  ``teacher_adapter``: 'ours' (``teacher``: our checkpoint dir), 'timm' (``teacher``: a
  state_dict file of the timm model ``teacher_model``) or 'torch' (``teacher``: a
  state_dict file or '', ``teacher_model``: 'package.module:factory', ``teacher_mean``
  and ``teacher_std``: its normalisation). ``teacher_kwargs`` go to the constructor,
  ``teacher_num_classes`` (0: the checkpoint's) is the head size, ``teacher_device`` the
  torch device, and ``teacher_class_index`` an optional class-index file. For 'ours',
  ``teacher_dtype`` is its compute dtype and ``teacher_sharding`` where its weights sit.
  """
  adapter = distill.get('teacher_adapter', 'ours')
  kwargs = dict(distill.get('teacher_kwargs', None) or {})
  inputs = record.student_normalisation(aug)
  if adapter == 'ours':
    teacher = jax_teacher.from_checkpoint(distill.teacher, input_mean=inputs[0],
                                          input_std=inputs[1],
                                          dtype=distill.get('teacher_dtype', 'float32'),
                                          sharding=distill.get('teacher_sharding',
                                                               'auto'), **kwargs)
  elif adapter in ('timm', 'torch'):
    torch_args = dict(device=distill.get('teacher_device', 'cpu'), input_mean=inputs[0],
                      input_std=inputs[1], **kwargs)
    if adapter == 'timm':
      teacher = torch_teacher.from_timm(distill.teacher_model, distill.teacher,
                                        num_classes=distill.get('teacher_num_classes', 0) or None,
                                        **torch_args)
    else:
      teacher = torch_teacher.from_torch_module(distill.teacher_model, distill.teacher or None,
                                                num_classes=distill.teacher_num_classes,
                                                mean=tuple(distill.teacher_mean),
                                                std=tuple(distill.teacher_std), **torch_args)
  else:
    raise ValueError(f'distill.teacher_adapter={adapter!r}; expected one of {ADAPTERS}.')
  class_index = distill.get('teacher_class_index', '')
  if class_index:
    teacher = record.map_classes(teacher, class_index, num_classes)
  if num_classes is not None:
    record.check_classes(teacher, num_classes)
  return teacher
