"""The MoCo wrapper: exact momentum update, a queue that enqueues and wraps, checkpointable state,
and under DDP (2 gloo ranks) one shared queue and a key shuffle that changes nothing but the batch
statistics."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from melecole.models import build_model
from melecole.models.moco import MoCo

TINY = dict(base_channels=4, embedding_dim=4, downsample=[[2, 2, 2]])


def _moco(queue_size=8, momentum=0.9, norm="group", projection_dim=3):
    torch.manual_seed(0)
    return MoCo(build_model("unet3d", norm=norm, **TINY), 4, projection_dim, queue_size, momentum)


def _pairs(batch=2, count=5, size=8 ** 3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, size, (batch, count), generator=generator)
    return index, index.clone()


def test_momentum_update_is_exact():
    moco = _moco(momentum=0.75)
    with torch.no_grad():
        for parameter in moco.encoder.parameters():
            parameter.add_(1.0)
    online = [p.detach().clone() for p in [*moco.encoder.parameters(), *moco.projector.parameters()]]
    before = [p.detach().clone() for p in [*moco.key_encoder.parameters(), *moco.key_projector.parameters()]]
    moco.momentum_update()
    after = [*moco.key_encoder.parameters(), *moco.key_projector.parameters()]
    assert len(online) == len(before) == len(after) > 0
    for q, k_old, k_new in zip(online, before, after):
        torch.testing.assert_close(k_new, 0.75 * k_old + 0.25 * q, rtol=0, atol=1e-7)
        assert not k_new.requires_grad
    assert int(moco.updates) == 1


def test_the_queue_enqueues_wraps_and_drops_padding():
    moco = _moco(queue_size=5, projection_dim=2)
    first = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    moco.enqueue(first)
    assert int(moco.queue_pointer) == 3 and int(moco.queue_count) == 3
    torch.testing.assert_close(moco.queue[:3], first)
    second = 10 + torch.arange(8, dtype=torch.float32).reshape(4, 2)
    moco.enqueue(second)  # rows 3, 4, then wraps to 0, 1
    assert int(moco.queue_pointer) == 2 and int(moco.queue_count) == 5
    torch.testing.assert_close(moco.queue[[3, 4, 0, 1]], second)
    torch.testing.assert_close(moco.queue[2], first[2])
    moco.enqueue(100 + torch.arange(4, dtype=torch.float32).reshape(2, 2), torch.tensor([False, True]))
    torch.testing.assert_close(moco.queue[2], torch.tensor([102.0, 103.0]))
    assert int(moco.queue_pointer) == 3
    many = torch.arange(14, dtype=torch.float32).reshape(7, 2)  # more than the queue: the newest 5 stay
    moco.enqueue(many)
    assert sorted(moco.queue[:, 0].tolist()) == sorted(many[2:, 0].tolist())
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        moco.enqueue(torch.zeros(3, 4))


def test_forward_returns_the_queue_before_its_own_keys_and_only_queries_carry_gradients():
    moco = _moco(queue_size=16).train()
    raw = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    index, view_index = _pairs()
    alone = moco(raw)
    assert set(alone) == {"embedding", "boundary"}
    outputs = moco(raw, raw.flip(-1), index, view_index)
    assert outputs["queries"].shape == outputs["keys"].shape == (10, 3)
    assert outputs["queue"].shape == (0, 3)  # empty before the first batch's keys went in
    assert outputs["queries"].requires_grad and not outputs["keys"].requires_grad
    torch.testing.assert_close(outputs["queries"].norm(dim=1), torch.ones(10))
    torch.testing.assert_close(moco.queue[:10], outputs["keys"])
    assert int(moco.queue_count) == 10 and int(moco.updates) == 1
    again = moco(raw, raw, index, view_index)
    torch.testing.assert_close(again["queue"], outputs["keys"])
    moco.eval()
    moco(raw, raw, index, view_index)
    assert int(moco.queue_count) == 16 and int(moco.updates) == 2  # evaluation neither updates nor enqueues
    with pytest.raises(ValueError, match="view_index"):
        moco(raw, raw, index, None)


def test_queue_and_momentum_network_survive_a_state_dict_round_trip():
    moco = _moco(queue_size=6)
    moco.enqueue(torch.randn(4, 3))
    moco.momentum_update()
    copy = _moco(queue_size=6, momentum=0.5)
    copy.load_state_dict(moco.state_dict())
    assert torch.equal(copy.queue, moco.queue) and int(copy.queue_pointer) == 4 and int(copy.updates) == 1
    for a, b in zip(copy.key_encoder.parameters(), moco.key_encoder.parameters()):
        assert torch.equal(a, b)


def _ddp_worker(rank: int, world: int, store: str, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        moco = _moco(queue_size=32, norm="group").train()
        view = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(10 + rank))
        plain = moco.key_encoder(view)["embedding"]
        moco._batch_norm = True  # take the shuffling path; group norm makes it exactly comparable
        moco.updates.fill_(7)  # seeds the order [3, 2, 0, 1]: every sample goes to the other rank
        order = torch.randperm(4, generator=torch.Generator().manual_seed(7)).tolist()
        shuffled = moco._key_embedding(view)
        moco.enqueue(torch.full((3, 3), float(rank)))
        results[rank] = {"crossed": all(i // 2 != rank for i in order[rank * 2:rank * 2 + 2]),
                         "same": torch.allclose(plain, shuffled, atol=1e-6), "queue": moco.queue[:6].clone(),
                         "count": int(moco.queue_count)}
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_share_one_queue_and_the_key_shuffle_is_undone():
    with tempfile.TemporaryDirectory() as folder:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, os.path.join(folder, "store"), results), nprocs=2, join=True)
        results = dict(results)
    assert results[0]["crossed"] and results[1]["crossed"]
    assert results[0]["same"] and results[1]["same"]
    expected = torch.tensor([[0.0] * 3] * 3 + [[1.0] * 3] * 3)  # rank 0's keys, then rank 1's
    assert torch.equal(results[0]["queue"], expected) and torch.equal(results[1]["queue"], expected)
    assert results[0]["count"] == results[1]["count"] == 6
