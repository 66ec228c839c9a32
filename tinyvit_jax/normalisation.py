"""Input normalisations: the per-channel mean and std, on [0, 1] pixels, that a model's
weights were trained with. Models record theirs (``pretrained_cfg``); the augmentation
normalises with them; neither imports the other, so both read them here."""

# timm's IMAGENET_DEFAULT_MEAN / _STD: TinyViT, DeiT, the convnets and the recipes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm's IMAGENET_INCEPTION_MEAN / _STD: the original (Google) ViT weights.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# timm's OPENAI_CLIP_MEAN / _STD: OpenAI CLIP and most CLIP towers since, the paper's
# teacher among them (Cream's MEAN_AND_STD_TYPE: clip).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
