"""Fast pretraining distillation: the teacher's sparse logit store and the targets rebuilt from it."""
