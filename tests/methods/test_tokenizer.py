"""BEiT's k-means tokenizer: recovers clear clusters, deterministic, sized from the data, saved as a buffer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.tokenizer import PatchTokenizer, resolve_codebook_size


def clusters(k: int = 6, dim: int = 12, per: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + 0.3 * torch.randn(k * per, dim, generator=g), labels


def test_ids_recover_clear_clusters_one_code_per_cluster() -> None:
    v, labels = clusters()
    tok = PatchTokenizer(6, 12).fit(v, torch.Generator().manual_seed(0))
    ids = tok.encode(v)
    table = torch.zeros(6, 6, dtype=torch.long).index_put_((labels, ids), torch.tensor(1), accumulate=True)
    assert torch.equal((table > 0).sum(0), torch.ones(6, dtype=torch.long))  # each code holds one cluster
    assert torch.equal((table > 0).sum(1), torch.ones(6, dtype=torch.long))  # each cluster has one code


def test_fit_is_deterministic_for_a_seed() -> None:
    v, _ = clusters(k=8, seed=1)
    a = PatchTokenizer(16, 12).fit(v, torch.Generator().manual_seed(5)).codebook
    b = PatchTokenizer(16, 12).fit(v, torch.Generator().manual_seed(5)).codebook
    assert torch.equal(a, b)


def test_encode_keeps_leading_shape() -> None:
    v, _ = clusters()
    tok = PatchTokenizer(6, 12).fit(v, torch.Generator().manual_seed(0))
    assert tok.encode(v.reshape(4, 300, 12)).shape == (4, 300)


def test_auto_size_is_capped_by_the_patches() -> None:
    assert resolve_codebook_size("auto", 100) == 3  # 100 // 32
    assert resolve_codebook_size("auto", 40) == 2
    assert resolve_codebook_size("auto", 10_000_000) == 1024
    assert resolve_codebook_size(50, 50) == 50


def test_explicit_size_above_the_patches_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="codebook_size=500 is larger than the 200 patches") as err:
        resolve_codebook_size(500, 200)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="larger than the 100 patches"):
        PatchTokenizer(101, 4).fit(torch.randn(100, 4), torch.Generator())


def test_codebook_round_trips_through_safetensors_and_json(tmp_path) -> None:
    v, _ = clusters()
    tok = PatchTokenizer(6, 12, normalize="l2").fit(v, torch.Generator().manual_seed(0))
    save_file(tok.state_dict(), tmp_path / "tok.safetensors")
    (tmp_path / "tok.json").write_text(json.dumps(tok.config()))
    cfg = json.loads((tmp_path / "tok.json").read_text())
    back = PatchTokenizer(cfg["size"], cfg["dim"], cfg["normalize"])
    back.load_state_dict(load_file(tmp_path / "tok.safetensors"))
    assert torch.equal(back.encode(v), tok.encode(v))


def test_l2_normalisation_gives_scaled_vectors_the_same_token() -> None:
    v, _ = clusters()
    tok = PatchTokenizer(6, 12, normalize="l2").fit(v, torch.Generator().manual_seed(0))
    assert torch.equal(tok.encode(v * 7.5), tok.encode(v))


def test_encode_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        PatchTokenizer(4, 3).encode(torch.randn(2, 3))
