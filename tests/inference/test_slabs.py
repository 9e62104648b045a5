"""A volume's sliding window streamed plane by plane: the same numbers as MONAI's ``sliding_window_inference`` and
torch's trilinear resampling, without holding the whole volume's scores."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.inference.slabs import CHUNK, resampled_planes, window_planes


def voxelwise(batch: torch.Tensor) -> torch.Tensor:
    """Softmax over 3 classes of functions of each voxel's 2 channels: no voxel depends on the batch it is in."""
    a, b = batch[:, 0], batch[:, 1]
    return torch.softmax(torch.stack([a, torch.sin(3 * b), a * b - 0.5]), dim=0).transpose(0, 1)


CASES = list(itertools.product([(20, 17, 9), (5, 30, 12), (33, 8, 8)], [(8, 8, 8), (16, 6, 10)],
                               [0.0, 0.25, 0.5, 0.8], ["gaussian", "constant"]))


@pytest.mark.parametrize("shape,roi,overlap,blend", CASES)
def test_the_planes_are_monais_sliding_window_to_the_bit_for_a_voxelwise_model(shape, roi, overlap, blend):
    from monai.inferers import sliding_window_inference

    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = sliding_window_inference(x[None], roi, 3, voxelwise, overlap=overlap, mode=blend, sw_device="cpu",
                                       device="cpu")[0]
        blocks = list(window_planes(x, roi, overlap, blend, 3, voxelwise))
    firsts = [a for a, _ in blocks]
    assert firsts == sorted(firsts) and firsts[0] == 0  # in order, each plane once, none missing
    assert [a + b.shape[1] for a, b in blocks[:-1]] == firsts[1:]
    assert all(b.shape[1] <= CHUNK for _, b in blocks)
    assert torch.equal(torch.cat([b for _, b in blocks], dim=1), ref)


def test_a_convolutional_model_batched_otherwise_than_monai_agrees_within_rounding():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    x = torch.randn(1, 30, 26, 21, generator=torch.Generator().manual_seed(3))
    calls = []

    def scores(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return torch.softmax(net(batch), 1)

    with torch.inference_mode():  # 3 x 2 windows a plane of windows in batches of 4: MONAI's cross the planes
        ref = sliding_window_inference(x[None], (12, 12, 12), 4, scores, overlap=0.25, mode="gaussian")[0]
        calls.clear()
        got = torch.cat([b for _, b in window_planes(x, (12, 12, 12), 0.25, "gaussian", 4, scores)], dim=1)
    assert calls == [4, 2] * 3
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_planes_are_handed_on_before_the_last_windows_are_computed():
    x = torch.randn(2, 64, 10, 10, generator=torch.Generator().manual_seed(1))
    computed = []

    def scores(batch: torch.Tensor) -> torch.Tensor:
        computed.append(batch.shape[0])
        return voxelwise(batch)

    with torch.inference_mode():
        planes = window_planes(x, (8, 8, 8), 0.25, "gaussian", 2, scores)
        next(planes)
        early = sum(computed)
        rest = sum(b.shape[1] for _, b in planes)
    assert early < sum(computed) / 4 and rest > 0  # the first planes come after the first windows, not all of them


@pytest.mark.parametrize("size,out", [((7, 5, 6), (13, 9, 4)), ((40, 10, 8), (17, 4, 3)), ((1, 4, 4), (6, 5, 5)),
                                      ((6, 3, 3), (1, 3, 3)), ((9, 9, 9), (9, 9, 9)), ((120, 6, 5), (170, 7, 5))])
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_resampling_streamed_is_torchs_trilinear(size, out, chunk):
    v = torch.rand(4, *size, generator=torch.Generator().manual_seed(2))
    ref = F.interpolate(v[None], size=out, mode="trilinear", align_corners=True)[0]
    blocks = ((a, v[:, a:a + chunk]) for a in range(0, size[0], chunk))
    got = list(resampled_planes(blocks, size[0], out))
    assert [a for a, _ in got] == list(range(out[0]))
    # within two float32 steps of 1: the same weights, summed in another order
    torch.testing.assert_close(torch.cat([b for _, b in got], dim=1), ref, rtol=0, atol=2.5e-7)
