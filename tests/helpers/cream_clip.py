"""Cream's CLIP teacher (microsoft/Cream, TinyViT/models/clip.py, model type
clip_vit_large14_224) rebuilt in torch with its structure, module names and forward, at
any width, for the conversion tests; and a stand-in for the yacs ``CfgNode`` its
training checkpoints keep under ``config``."""
from collections import OrderedDict

import torch
from torch import nn


class CfgNode(dict):
  """Pickled as yacs' CfgNode is: a dict subclass with attributes of its own. A class
  neither torch nor the converter knows."""

  def __init__(self, init=None):
    super().__init__(init or {})
    self.__dict__['immutable'] = False


class LayerNorm(nn.LayerNorm):
  """Computes in float32 whatever the input dtype, as CLIP's."""

  def forward(self, x):
    return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):

  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.attn = nn.MultiheadAttention(width, heads)
    self.ln_1 = LayerNorm(width)
    self.mlp = nn.Sequential(
        OrderedDict([('c_fc', nn.Linear(width, 4 * width)), ('gelu', QuickGELU()),
                     ('c_proj', nn.Linear(4 * width, width))]))
    self.ln_2 = LayerNorm(width)

  def forward(self, x):  # x: (tokens, batch, width), MultiheadAttention's layout
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):

  def __init__(self, width: int, layers: int, heads: int):
    super().__init__()
    self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

  def forward(self, x):
    return self.resblocks(x)


class VisionTransformer(nn.Module):
  """OpenAI CLIP's visual tower: bias-free patch conv, class embedding, ln_pre, blocks,
  ln_post on the class token, then ``x @ proj``."""

  def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
               output_dim: int):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
    scale = width**-0.5
    self.class_embedding = nn.Parameter(scale * torch.randn(width))
    self.positional_embedding = nn.Parameter(scale * torch.randn(
        (input_resolution // patch_size)**2 + 1, width))
    self.ln_pre = LayerNorm(width)
    self.transformer = Transformer(width, layers, heads)
    self.ln_post = LayerNorm(width)
    self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

  def forward(self, x):
    x = self.conv1(x).flatten(2).permute(0, 2, 1)  # (batch, grid², width)
    cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
    x = self.ln_pre(x)
    x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
  """Cream's classifier: the visual tower (heads = width // 64), then ``head``."""

  def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
               vision_patch_size: int, num_classes: int = 1000):
    super().__init__()
    self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width,
                                    vision_layers, vision_width // 64, embed_dim)
    self.head = nn.Linear(embed_dim, num_classes)

  def forward(self, image):
    return self.head(self.visual(image))


def cream_clip(*, width: int = 1024, layers: int = 24, patch: int = 14, img_size: int = 224,
               embed_dim: int = 768, num_classes: int = 21841, seed: int = 0) -> CLIP:
  """Cream's clip_vit_large14_224 by default; random weights, eval mode."""
  torch.manual_seed(seed)
  model = CLIP(embed_dim, img_size, layers, width, patch, num_classes)
  return model.eval()
