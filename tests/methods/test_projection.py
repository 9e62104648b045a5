"""Projection / prediction heads (layouts of the papers) and the prototypes layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomed_ssl.methods import projection as P


def _layout(m: nn.Module) -> list[str]:
    out = []
    for layer in m:
        if isinstance(layer, nn.Linear):
            out.append("L" if layer.bias is not None else "l")
        elif isinstance(layer, nn.BatchNorm1d):
            out.append("B" if layer.affine else "b")
        else:
            out.append("R")
    return out


@pytest.mark.parametrize(("factory", "layout"), [
    (lambda: P.simclr_projector(16, 32, 8), ["l", "B", "R", "L"]),
    (lambda: P.simclr_projector(16, 32, 8, num_layers=3), ["l", "B", "R", "l", "B", "R", "L"]),
    (lambda: P.moco_v2_projector(16, 32, 8), ["L", "R", "L"]),
    (lambda: P.moco_v3_projector(16, 32, 8), ["l", "B", "R", "l", "B", "R", "l", "b"]),
    (lambda: P.moco_v3_predictor(8, 32), ["l", "B", "R", "l", "b"]),
    (lambda: P.byol_projector(16, 32, 8), ["l", "B", "R", "L"]),
    (lambda: P.byol_predictor(8, 32), ["l", "B", "R", "L"]),
    (lambda: P.simsiam_projector(16, 32, 8), ["l", "B", "R", "l", "B", "R", "l", "b"]),
    (lambda: P.simsiam_predictor(8, 4), ["l", "B", "R", "L"]),
    (lambda: P.barlow_twins_projector(16, 32, 8), ["l", "B", "R", "l", "B", "R", "L"]),
    (lambda: P.vicreg_expander(16, 32, 8), ["l", "B", "R", "l", "B", "R", "L"]),
    (lambda: P.swav_projector(16, 32, 8), ["l", "B", "R", "L"]),
])
def test_heads_follow_their_papers_layout_and_map_shapes(factory, layout: list[str]) -> None:
    head = factory()
    assert _layout(head) == layout
    assert head(torch.randn(5, head.in_dim)).shape == (5, head.out_dim)


def test_single_layer_head_is_one_linear() -> None:
    assert _layout(P.simclr_projector(16, 32, 8, num_layers=1)) == ["L"]


def test_prototypes_rows_are_unit_norm_and_renormalised() -> None:
    protos = P.Prototypes(8, 12)
    torch.testing.assert_close(protos.heads[0].weight.norm(dim=1), torch.ones(12))
    with torch.no_grad():
        protos.heads[0].weight.mul_(3.0)
    protos.normalize_()
    torch.testing.assert_close(protos.heads[0].weight.norm(dim=1), torch.ones(12))


def test_prototypes_give_one_score_tensor_per_head() -> None:
    z = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    single = P.Prototypes(8, 6)
    assert single(z).shape == (4, 6)
    multi = P.Prototypes(8, [6, 3])
    assert [s.shape for s in multi(z)] == [(4, 6), (4, 3)] and multi.sizes == [6, 3]
    assert float(single(z).detach().abs().max()) <= 1.0 + 1e-6  # cosine scores


def test_prototypes_take_kmeans_centroids() -> None:
    protos = P.Prototypes(4, [2, 3])
    c = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    protos.set_(1, c)
    assert torch.equal(protos.heads[1].weight, c)


def test_bad_head_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="last_norm"):
        P.ProjectionMLP([4, 4], last_norm="sync")
    with pytest.raises(ValueError, match="n_prototypes"):
        P.Prototypes(4, 0)


@pytest.mark.parametrize("name", ["moco_v3", "byol", "simsiam", "barlow_twins", "vicreg", "simclr"])
def test_two_view_heads_normalise_both_views_in_one_batch(name: str) -> None:
    """The heads take both views in one batch of 2B (SimCLR's official way; MoCo v3's, BYOL's, SimSiam's and the
    redundancy methods' official code runs one pass per view). Measured (docs/benchmarks_eurosat.md): per-view
    BatchNorm was level on EuroSAT and stopped MoCo v3's and SimSiam's losses falling at 4-6 samples per view."""
    from geomed_ssl.methods import METHODS
    from geomed_ssl.models.encoder import EncoderConfig

    torch.manual_seed(0)
    enc = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
    method = METHODS[name](enc, {"proj_hidden_dim": 16, "proj_dim": 8}, max_steps=10)
    seen: list[int] = []
    for module in method.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g) + 3.0]
    method.training_loss({"views": {"global": views, "local": []}, "index": torch.arange(6)}, 0, g)
    assert seen and set(seen) == {12}
