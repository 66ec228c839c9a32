"""The teacher: one way to load it, for the save pass and for an online student alike.

``factory.make_teacher(distill, aug)`` builds the record a save pass needs
(``record.Teacher``: a name, a checkpoint hash, a class count and probabilities) from a
config's ``distill`` section. Any model can be one: our checkpoints and Hub names in
``jax_teacher``, timm and torch modules in ``torch_teacher``, each read through a
class-index file (``record.map_classes``) when the student's classes are not the
teacher's. ``jax_teacher.online`` is the same teacher run inside the student's jitted
step, which only a JAX model can be. The factory imports both kinds and they import only
``record``, so no module here imports another in a cycle; this file imports nothing, so
importing one kind does not load the others.
"""
