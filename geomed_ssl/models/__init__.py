"""Token grid, patch embeddings, position embeddings, transformer blocks, the ViT encoder and its config, the MAE
decoder and the fine-tuning heads."""

from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.patch_embed import PATCH_EMBEDS, PlainPatchEmbed
from geomed_ssl.models.pos_embed import interpolate_pos_embed, sincos_pos_embed

__all__ = [
    "EncoderConfig", "ViTEncoder", "PATCH_EMBEDS", "PlainPatchEmbed", "interpolate_pos_embed", "sincos_pos_embed",
]
