"""MAE's one decoder for plain and unit-major tokens: shapes, and the parameter names checkpoints hold."""

from __future__ import annotations

import torch

from geomed_ssl.models.mae_decoder import DecoderUnits, MAEDecoder


def decoder(**units) -> MAEDecoder:
    torch.manual_seed(0)
    heads = units.pop("heads", [3])
    return MAEDecoder(16, 8, 1, 2, (2, 2), patch_numel=4, head_channels=heads, **units)


def test_plain_tokens_get_one_head_of_every_band_under_hf_names() -> None:
    dec = decoder()
    assert {"pred.weight", "pred.bias", "mask_token", "pos_embed"} <= set(dec.state_dict())
    ids_restore = torch.randperm(4).expand(2, -1)
    assert dec(torch.randn(2, 2, 16), ids_restore, (2, 2)).shape == (2, 4, 4 * 3)


def test_unit_tokens_get_a_head_per_unit_zero_padded_to_the_largest() -> None:
    dec = decoder(heads=[2, 1], unit_rows=2)
    assert {"pred.0.weight", "pred.1.weight", "unit_embed"} <= set(dec.state_dict())
    assert dec.no_weight_decay() == {"pos_embed", "mask_token", "unit_embed"}
    units = DecoderUnits(rows=[[0], [1]], heads=[0, 1], sizes=[2, 1])
    out = dec(torch.randn(2, 3, 16), torch.randperm(8).expand(2, -1), (2, 2), units)  # (B, U*N, P*cmax)
    assert out.shape == (2, 8, 4 * 2)
    assert out[:, 4:].unflatten(-1, (4, 2))[..., 1].abs().sum() == 0  # the one-band unit's padding


def test_a_fixed_unit_table_is_not_saved_in_checkpoints() -> None:
    dec = decoder(heads=[2], fixed_table=torch.randn(5, 8))
    assert "unit_table" not in dec.state_dict() and "unit_embed" not in dec.state_dict()
    units = DecoderUnits(rows=[[0, 1], [4]], heads=[0, 0], sizes=[2, 1])
    assert dec(torch.randn(1, 2, 16), torch.randperm(8)[None], (2, 2), units).shape == (1, 8, 4 * 2)
