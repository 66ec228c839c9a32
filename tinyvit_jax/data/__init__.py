"""Data: sources, keyed epoch order and augmentation. Knows nothing of models."""
