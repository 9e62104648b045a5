"""Patch embeddings, position embeddings, the ViT encoder and the MAE decoder."""

from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.patch_embed import PATCH_EMBEDS, PlainPatchEmbed
from geomed_ssl.models.pos_embed import interpolate_pos_embed, sincos_pos_embed

__all__ = [
    "EncoderConfig", "ViTEncoder", "PATCH_EMBEDS", "PlainPatchEmbed", "interpolate_pos_embed", "sincos_pos_embed",
]
