"""Input normalisations: the per-channel mean and std, on [0, 1] pixels, that a model's
weights were trained with. Models record theirs (``pretrained_cfg``); the augmentation
normalises with them; neither imports the other, so both read them here."""

# timm's IMAGENET_DEFAULT_MEAN / _STD: every model of ours and its recipes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
