"""FIFO semantics of the feature queue: order, wrap-around, batches longer than the queue, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.methods.queue import FeatureQueue


def _rows(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 2)  # row i is [i, i]


def test_empty_queue_grows_in_arrival_order() -> None:
    q = FeatureQueue(5, 2, init="empty")
    assert len(q) == 0 and q.contents().shape == (0, 2)
    q.enqueue(_rows(0, 2))
    q.enqueue(_rows(2, 2))
    assert len(q) == 4 and not q.is_full
    assert torch.equal(q.oldest_first(), _rows(0, 4))


def test_enqueue_wraps_around_and_drops_the_oldest() -> None:
    q = FeatureQueue(5, 2, init="empty")
    for start in range(0, 9, 3):  # 9 rows in batches of 3 through a queue of 5
        q.enqueue(_rows(start, 3))
    assert q.is_full and int(q.ptr) == 9 % 5
    assert torch.equal(q.oldest_first(), _rows(4, 5))
    assert sorted(q.contents()[:, 0].tolist()) == list(range(4, 9))


def test_batch_longer_than_the_queue_keeps_its_last_rows_in_order() -> None:
    q = FeatureQueue(4, 2, init="empty")
    q.enqueue(_rows(0, 3))
    q.enqueue(_rows(3, 7))  # 10 rows in all
    assert torch.equal(q.oldest_first(), _rows(6, 4))
    q.enqueue(_rows(10, 1))
    assert torch.equal(q.oldest_first(), _rows(7, 4))


def test_queue_equals_a_row_by_row_fifo_for_any_batch_sizes() -> None:
    q, fifo, start = FeatureQueue(7, 2, init="empty"), [], 0
    for n in [3, 1, 5, 7, 2, 9, 4]:
        q.enqueue(_rows(start, n))
        fifo = (fifo + list(range(start, start + n)))[-7:]
        start += n
        assert q.oldest_first()[:, 0].tolist() == fifo


def test_state_dict_round_trip_resumes_exactly() -> None:
    a = FeatureQueue(6, 2, init="empty")
    a.enqueue(_rows(0, 4))
    a.enqueue(_rows(4, 4))
    b = FeatureQueue(6, 2, init="empty")
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"rows", "ptr", "filled"}
    for q in (a, b):
        q.enqueue(_rows(8, 3))
    assert torch.equal(a.rows, b.rows) and int(a.ptr) == int(b.ptr) and len(a) == len(b)


def test_random_init_is_full_of_unit_rows() -> None:
    q = FeatureQueue(10, 4, generator=torch.Generator().manual_seed(0))
    assert q.is_full
    torch.testing.assert_close(q.contents().norm(dim=1), torch.ones(10))
    assert torch.equal(q.rows, FeatureQueue(10, 4, generator=torch.Generator().manual_seed(0)).rows)


def test_contents_is_a_copy_that_later_enqueues_leave_alone() -> None:
    q = FeatureQueue(4, 2, init="empty")
    q.enqueue(_rows(0, 4))
    snapshot = q.contents()
    q.enqueue(_rows(4, 2))
    assert torch.equal(snapshot, _rows(0, 4))


def test_integer_rows_of_any_shape() -> None:
    q = FeatureQueue(3, (), dtype=torch.long, init="empty")
    q.enqueue(torch.tensor([5, 6, 7, 8]))
    assert q.oldest_first().tolist() == [6, 7, 8]
    m = FeatureQueue(3, (2, 4), init="empty")
    m.enqueue(torch.randn(2, 2, 4))
    assert m.contents().shape == (2, 2, 4)


def test_wrong_row_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"queue rows have shape \(2,\)"):
        FeatureQueue(4, 2).enqueue(torch.zeros(3, 5))


def test_moco_v2s_automatic_queue_leaves_out_a_batch_of_the_data() -> None:
    """With 8 windows and batch 8, half the data (4 keys) queued every window a step trains on as a negative."""
    from geomed_ssl.methods.base import MethodContext
    from geomed_ssl.methods.moco_v2 import MoCoV2Settings

    small = MoCoV2Settings(queue_size="auto")
    small.resolve_auto(MethodContext(samples=8, batch_size=8))
    large = MoCoV2Settings(queue_size="auto")
    large.resolve_auto(MethodContext(samples=1000, batch_size=32))
    assert (small.queue_size, large.queue_size) == (1, 500)


def test_moco_v2s_automatic_queue_is_the_same_for_one_process_or_several_on_the_same_global_batch() -> None:
    """Every rank's keys are enqueued, so a step's own windows are the global batch's: 2 processes of batch 4
    fit the queue that 1 process of batch 8 does."""
    from geomed_ssl.methods.base import MethodContext
    from geomed_ssl.methods.moco_v2 import MoCoV2Settings

    sizes = []
    for batch, world in ((8, 1), (4, 2), (2, 4)):
        settings = MoCoV2Settings(queue_size="auto")
        settings.resolve_auto(MethodContext(samples=12, batch_size=batch, world=world))
        sizes.append(settings.queue_size)
    assert sizes == [4, 4, 4]
