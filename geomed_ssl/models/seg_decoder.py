"""UNETR-style segmentation decoder on the ViT encoder, 2D or 3D, for any power-of-two patch size, depth and taps.

MONAI's ``UNETR`` hard-codes patch 16, 12 blocks and the taps ``hidden_states_out[3], [6], [9]`` (MONAI's ViT
appends every block's output, so these are the outputs of 0-based blocks 3, 6, 9, before the final norm). This
module generalises it with MONAI's own blocks (``UnetrBasicBlock``, ``UnetrPrUpBlock``, ``UnetrUpBlock``,
``UnetOutBlock``) and reproduces MONAI's numbers exactly at MONAI's configuration (see the tests).

Scales ("levels"). With patch ``p_a = 2**k_a`` on axis ``a`` there are ``n_up = max_a k_a`` x2 up-stages. Level
``l`` (0 = input resolution, ``n_up`` = token grid) is the input downsampled by ``min(2**l, p_a)`` on axis ``a``,
so the stage from level ``l`` to ``l - 1`` doubles axis ``a`` when ``l <= k_a`` (kernel = stride 2) and leaves it
(kernel = stride 1) otherwise: axes with smaller patches finish their upsampling in the finest stages. Level ``l``
carries ``feature_size * 2**l`` channels.

Skips. Level 0's skip is ``encoder1`` (``UnetrBasicBlock`` on the input image). Levels ``1 .. n_up - 1`` (``L`` of
them) take the ``T`` encoder taps, ordered shallow to deep: tap ``j`` goes to level
``L - floor((T - 1 - j) * L / T)``. With ``T == L`` that is tap ``j`` -> level ``j + 1`` (MONAI: blocks 3, 6, 9 ->
levels 1, 2, 3, i.e. its ``encoder2/3/4``); the deepest tap always feeds the first (coarsest) up-block. Taps that
share a level are concatenated on channels (``T > L``); a level with no tap (``T < L``) gets an up-block without a
skip (transposed conv + residual conv block). Each tapped level ``l`` has a ``UnetrPrUpBlock`` bringing its tokens
from the token grid to level ``l`` (``n_up - l`` transposed convs, i.e. MONAI's ``num_layer = n_up - l - 1``; when
the per-stage kernels differ on anisotropic patches the transposed convs are rebuilt per stage). When
``n_up == 1`` there is no intermediate level and the taps are concatenated to the final tokens.

Decoding. As in MONAI, the first up-block starts from the encoder's final, *normed* output (MONAI's ``x`` into
``decoder5``); ``UnetrUpBlock`` ``l`` goes from level ``l + 1`` to ``l`` and joins level ``l``'s skip; a 1x1
``UnetOutBlock`` gives the logits. Parameter names: ``encoder1``, ``skips["l"]`` (MONAI ``encoder{l+1}``),
``ups[l]`` (MONAI ``decoder{l+2}``), ``out``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from geomed_ssl.config import SEG_HEADS
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.encoder import ViTEncoder


def up_stages(patch_size: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-axis transposed-conv kernel (= stride) of each up-stage, indexed by target level: entry ``l`` goes from
    level ``l + 1`` to ``l``. Raises ConfigError unless every axis is a power of two and one is at least 2."""
    bad = [p for p in patch_size if p < 1 or p & (p - 1)]
    if bad or max(patch_size) < 2:
        raise ConfigError(
            f"model.patch_size {list(patch_size)} is not supported by the UNETR decoder: every axis must be a power "
            f"of two (1, 2, 4, 8, 16, 32, ...) and at least one axis 2 or more."
        )
    k = [int(math.log2(p)) for p in patch_size]
    return [tuple(2 if lvl + 1 <= ka else 1 for ka in k) for lvl in range(max(k))]


def tap_levels(num_taps: int, n_up: int) -> list[int]:
    """Level each tap (shallow -> deep) feeds: spread over levels ``1 .. n_up - 1``, deepest tap at the deepest;
    all at ``n_up`` (joined to the final tokens) when there is no intermediate level."""
    n_levels = n_up - 1
    if n_levels == 0:
        return [n_up] * num_taps
    return [n_levels - (num_taps - 1 - j) * n_levels // num_taps for j in range(num_taps)]


def _transposed(spatial_dims: int, in_ch: int, out_ch: int, kernel: tuple[int, ...]) -> nn.Module:
    from monai.networks.blocks.dynunet_block import get_conv_layer  # monai (~4 s to import): the UNETR head only
    return get_conv_layer(spatial_dims, in_ch, out_ch, kernel_size=kernel, stride=kernel, conv_only=True,
                          is_transposed=True)


def _pr_up_block(spatial_dims: int, in_ch: int, out_ch: int, kernels: list[tuple[int, ...]], norm_name: str,
                 res_block: bool) -> nn.Module:
    """MONAI ``UnetrPrUpBlock`` with ``len(kernels)`` transposed convs; a stage whose kernel differs from the
    first (anisotropic patches) gets its transposed conv rebuilt with its own kernel, keeping MONAI's layout."""
    from monai.networks.blocks import UnetrPrUpBlock
    block = UnetrPrUpBlock(spatial_dims, in_ch, out_ch, num_layer=len(kernels) - 1, kernel_size=3, stride=1,
                           upsample_kernel_size=kernels[0], norm_name=norm_name, conv_block=True, res_block=res_block)
    for seq, kernel in zip(block.blocks, kernels[1:]):
        if kernel != kernels[0]:
            seq[0] = _transposed(spatial_dims, out_ch, out_ch, kernel)
    return block


class UpBlockNoSkip(nn.Module):
    """``UnetrUpBlock`` without a skip: transposed conv then a (residual) conv block, for levels with no tap."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, kernel: tuple[int, ...], norm_name: str,
                 res_block: bool) -> None:
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock
        self.transp_conv = _transposed(spatial_dims, in_ch, out_ch, kernel)
        block = UnetResBlock if res_block else UnetBasicBlock
        self.conv_block = block(spatial_dims, out_ch, out_ch, kernel_size=3, stride=1, norm_name=norm_name)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.conv_block(self.transp_conv(inp))


def init_upsampling_without_checkerboard(module: nn.Module) -> None:
    """Give every transposed convolution whose kernel equals its stride (the UNETR up-stages) the same weights at
    each kernel offset, so at initialisation it is a 1x1 convolution followed by nearest upsampling.

    With independent random weights per offset (PyTorch's default) the 2^d output voxels of each input voxel get
    different filters: a period-2 (4, 8, 16 through the stages) pattern that a few-label fine-tune does not train
    away; on BraTS it left predicted tumour in stripes along one axis (Aitken et al. 2017, "Checkerboard artifact
    free sub-pixel convolution", the same remedy as ICNR). Training may still learn offset-specific weights."""
    for m in module.modules():
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and \
                tuple(m.kernel_size) == tuple(m.stride):
            with torch.no_grad():
                first = m.weight[(Ellipsis, *([slice(0, 1)] * len(m.kernel_size)))]  # (in, out, 1, ..., 1)
                m.weight.copy_(first.expand_as(m.weight))


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Spatial tokens (B, N, D) -> a feature map (B, D, *grid)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class UNETRDecoder(nn.Module):
    """Tokens of ``num_layers_tapped`` encoder blocks + the final normed tokens + the input image -> logits."""

    def __init__(self, spatial_dims: int, embed_dim: int, patch_size: tuple[int, ...], num_layers_tapped: int,
                 in_chans: int, out_chans: int, feature_size: int = 16, norm_name: str = "instance",
                 res_block: bool = True) -> None:
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
        if len(patch_size) != spatial_dims:
            raise ConfigError(f"model.patch_size {list(patch_size)} does not have {spatial_dims} axes.")
        self.spatial_dims, self.embed_dim, self.patch_size = spatial_dims, embed_dim, tuple(patch_size)
        self.num_taps = num_layers_tapped
        kernels = up_stages(self.patch_size)  # kernels[l]: level l+1 -> l
        n_up = self.n_up = len(kernels)
        self.tap_level = tap_levels(num_layers_tapped, n_up)
        width = [feature_size * 2**lvl for lvl in range(n_up)]  # channels at each level below the token grid

        self.encoder1 = UnetrBasicBlock(spatial_dims, in_chans, feature_size, kernel_size=3, stride=1,
                                        norm_name=norm_name, res_block=res_block)
        self.skips = nn.ModuleDict()
        for lvl in sorted(set(self.tap_level) - {n_up}):
            n = self.tap_level.count(lvl)
            self.skips[str(lvl)] = _pr_up_block(spatial_dims, n * embed_dim, width[lvl], kernels[lvl:][::-1],
                                                norm_name, res_block)
        self.ups = nn.ModuleList()
        for lvl in range(n_up):
            in_ch = width[lvl + 1] if lvl + 1 < n_up else embed_dim * (1 + self.tap_level.count(n_up))
            if lvl == 0 or str(lvl) in self.skips:
                self.ups.append(UnetrUpBlock(spatial_dims, in_ch, width[lvl], kernel_size=3,
                                             upsample_kernel_size=kernels[lvl], norm_name=norm_name,
                                             res_block=res_block))
            else:
                self.ups.append(UpBlockNoSkip(spatial_dims, in_ch, width[lvl], kernels[lvl], norm_name, res_block))
        self.out = UnetOutBlock(spatial_dims, feature_size, out_chans)
        init_upsampling_without_checkerboard(self)

    def forward(self, x_in: torch.Tensor, hidden: list[torch.Tensor], grid: tuple[int, ...],
                final: torch.Tensor) -> torch.Tensor:
        """``x_in`` (B, C, *S), ``hidden`` the taps' spatial tokens (B, N, D) shallow -> deep, ``grid`` the token
        grid, ``final`` the encoder's normed final spatial tokens (B, N, D) -> logits (B, K, *S)."""
        if len(hidden) != self.num_taps:
            raise ConfigError(f"the UNETR decoder was built for {self.num_taps} encoder taps, got {len(hidden)}.")
        expect = tuple(g * p for g, p in zip(grid, self.patch_size))
        if tuple(x_in.shape[2:]) != expect:
            raise DataError(f"input of spatial shape {tuple(x_in.shape[2:])} does not match token grid {tuple(grid)} "
                            f"x patch {self.patch_size} = {expect}.")
        maps = [tokens_to_map(h, grid) for h in hidden]  # each (B, D, *grid)
        skips = {0: self.encoder1(x_in)}  # (B, f, *S)
        for key, block in self.skips.items():
            lvl = int(key)
            skips[lvl] = block(torch.cat([m for m, t in zip(maps, self.tap_level) if t == lvl], dim=1))
        x = torch.cat([tokens_to_map(final, grid)] + [m for m, t in zip(maps, self.tap_level) if t == self.n_up], 1)
        for lvl in range(self.n_up - 1, -1, -1):
            x = self.ups[lvl](x, skips[lvl]) if lvl in skips else self.ups[lvl](x)  # (B, f * 2**lvl, *S_lvl)
        return self.out(x)


class LinearDecoder(nn.Module):
    """The linear segmentation probe (DINOv2's "linear" evaluation): the taps' and the final tokens concatenated per
    position, BatchNorm without affine, a 1x1 convolution to class logits on the token grid, then bilinear
    (trilinear) upsampling to the input size. No access to the raw pixels: what it separates, the encoder's
    features separate."""

    def __init__(self, spatial_dims: int, embed_dim: int, num_layers_tapped: int, out_chans: int) -> None:
        super().__init__()
        channels = embed_dim * (num_layers_tapped + 1)
        self.num_taps = num_layers_tapped
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.norm = norm(channels, affine=False)
        self.out = conv(channels, out_chans, kernel_size=1)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x_in: torch.Tensor, hidden: list[torch.Tensor], grid: tuple[int, ...],
                final: torch.Tensor) -> torch.Tensor:
        """Same arguments as :meth:`UNETRDecoder.forward`; ``x_in`` only gives the output size."""
        if len(hidden) != self.num_taps:
            raise ConfigError(f"the linear decoder was built for {self.num_taps} encoder taps, got {len(hidden)}.")
        tokens = torch.cat([*hidden, final], dim=-1)  # (B, N, D * (T + 1))
        logits = self.out(self.norm(tokens_to_map(tokens, grid)))  # (B, K, *grid)
        return nn.functional.interpolate(logits, size=tuple(x_in.shape[2:]), mode=self.mode, align_corners=False)


class SegmentationModel(nn.Module):
    """ViT encoder + a decoder (UNETR or the linear probe) over the outputs of the chosen 0-based encoder blocks."""

    def __init__(self, encoder: ViTEncoder, num_classes: int, layers: list[int] | tuple[int, ...],
                 feature_size: int = 16, norm_name: str = "instance", res_block: bool = True,
                 head: str = "unetr", probe: str = "linear", memory: int = 0) -> None:
        """``layers``: 0-based block indices (negative count from the end), sorted shallow -> deep, duplicates
        dropped; ``[3, 6, 9]`` on a 12-block encoder is MONAI UNETR's choice. ``head``: "unetr", "linear" or
        "probe" (a fitted frozen ``probe``, linear or knn, with ``memory`` training pixels for knn)."""
        super().__init__()
        cfg = encoder.config
        depth = len(encoder.blocks)
        ids = [i + depth if i < 0 else i for i in layers]
        if any(not 0 <= i < depth for i in ids):
            raise ConfigError(f"segmentation layers {list(layers)}: the encoder has {depth} blocks (0..{depth - 1}).")
        if num_classes < 1:
            raise ConfigError(f"segmentation num_classes must be at least 1, got {num_classes}.")
        self.encoder = encoder
        self.layers = sorted(set(ids))
        self.num_classes = num_classes
        self.head = head
        if head == "unetr":
            self.decoder = UNETRDecoder(cfg.spatial_dims, cfg.embed_dim, cfg.patch_size, len(self.layers),
                                        cfg.in_chans, num_classes, feature_size, norm_name, res_block)
        elif head == "linear":
            self.decoder = LinearDecoder(cfg.spatial_dims, cfg.embed_dim, len(self.layers), num_classes)
        elif head == "probe":
            from geomed_ssl.models.probe import ProbeDecoder

            self.decoder = ProbeDecoder(cfg.spatial_dims, cfg.embed_dim, len(self.layers), num_classes, probe, memory)
        else:
            raise ConfigError(f"segmentation head '{head}' is unknown; use one of {', '.join(SEG_HEADS)}.")

    @property
    def blend_logits(self) -> bool:
        """Whether prediction blends this model's logits over overlapping windows (``inference.sliding
        .blends_logits``): a fitted linear / propagate probe's scores are linear in the features, so blending them
        is the probe applied to the blended features, what ``compare``'s frozen protocols score."""
        return self.head == "probe" and getattr(self.decoder, "kind", "knn") != "knn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *S) with S a multiple of the patch size -> logits (B, K, *S)."""
        final, taps, grid = self.encoder.forward_with_taps(x, self.layers)  # (B, 1+N, D), L x (B, N, D)
        return self.decoder(x, taps, grid, final[:, 1:])

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())
