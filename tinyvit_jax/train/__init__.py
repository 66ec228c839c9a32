"""Training: the optimiser, the jitted steps, checkpoints, monitoring and the loop."""
