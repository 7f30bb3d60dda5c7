"""The MoCo wrapper: exact momentum update, a queue that enqueues and wraps with the keys'
(volume, label) identities, checkpointable state (old checkpoints without identities included),
and under DDP (2 gloo ranks) one shared queue and a key shuffle that changes nothing but the batch
statistics."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from melecole.models import build_model
from melecole.models.moco import UNKNOWN, MoCo
from melecole.training import make_ema

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


def _identities(*rows):
    return torch.tensor(rows, dtype=torch.long)


def test_identities_go_with_their_keys_through_padding_and_wrap_around():
    moco = _moco(queue_size=5, projection_dim=2)
    assert torch.equal(moco.queue_identity, torch.full((5, 2), UNKNOWN))
    moco.enqueue(torch.arange(6, dtype=torch.float32).reshape(3, 2), identity=_identities([0, 1], [0, 2], [1, 1]))
    second = 10 + torch.arange(8, dtype=torch.float32).reshape(4, 2)
    moco.enqueue(second, torch.tensor([True, False, True, True]), _identities([0, 3], [9, 9], [1, 4], [2, 5]))
    # Rows 3, 4, then wrapped to 0; the padding row and its identity never went in.
    torch.testing.assert_close(moco.queue[[3, 4, 0]], second[[0, 2, 3]])
    assert moco.queue_identity.tolist() == [[2, 5], [0, 2], [1, 1], [0, 3], [1, 4]]
    moco.enqueue(torch.zeros(1, 2))  # without identities: unknown
    assert moco.queue_identity[1].tolist() == [UNKNOWN, UNKNOWN]
    many = torch.arange(14, dtype=torch.float32).reshape(7, 2)  # more than the queue: the newest 5 stay
    moco.enqueue(many, identity=_identities(*[[3, label] for label in range(7)]))
    for row, identity in zip(moco.queue.tolist(), moco.queue_identity.tolist()):
        assert identity == [3, row[0] // 2]
    with pytest.raises(ValueError, match=r"\(K=2, 2\)"):
        moco.enqueue(torch.zeros(2, 2), identity=_identities([0, 1]))


def test_forward_enqueues_the_pairs_identities_and_returns_the_queues_before_them():
    moco = _moco(queue_size=16).train()
    raw = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    index, view_index = _pairs()
    identity = torch.stack([torch.zeros(2, 5, dtype=torch.long), torch.arange(10).reshape(2, 5) + 1], dim=-1)
    first = moco(raw, raw, index, view_index, identity=identity)
    assert first["queue_identity"].shape == (0, 2)
    second = moco(raw, raw, index, view_index)
    assert torch.equal(second["queue_identity"], identity.reshape(-1, 2))
    assert second["queue_identity"].dtype == torch.long and second["queue"].shape == (10, 3)
    assert moco.queue_identity[10:].eq(UNKNOWN).all()  # the second batch came without identities
    with pytest.raises(ValueError, match="identity"):
        moco(raw, raw, index, view_index, identity=identity[:, :4])


def test_identities_survive_a_checkpoint_file(tmp_path):
    moco = _moco(queue_size=4)
    for first in (0, 3):  # rows 0, 1, 2, then 3 and wrapped to 0, 1
        moco.enqueue(torch.randn(3, 3), identity=_identities(*[[v, 2 ** 62 + v] for v in range(first, first + 3)]))
    torch.save(moco.state_dict(), tmp_path / "moco.pt")
    copy = _moco(queue_size=4)
    copy.load_state_dict(torch.load(tmp_path / "moco.pt", weights_only=True))
    assert torch.equal(copy.queue_identity, moco.queue_identity) and torch.equal(copy.queue, moco.queue)
    assert copy.queue_identity.tolist() == [[4, 2 ** 62 + 4], [5, 2 ** 62 + 5], [2, 2 ** 62 + 2], [3, 2 ** 62 + 3]]
    assert int(copy.queue_pointer) == 2 and int(copy.queue_count) == 4


def test_a_state_dict_without_identities_loads_with_an_empty_queue():
    moco = _moco(queue_size=6)
    moco.enqueue(torch.randn(4, 3), identity=_identities(*[[0, label] for label in range(1, 5)]))
    moco.momentum_update()
    old = {key: value for key, value in moco.state_dict().items() if key != "queue_identity"}
    copy = _moco(queue_size=6)
    copy.enqueue(torch.randn(2, 3), identity=_identities([1, 1], [1, 2]))
    copy.load_state_dict(old)  # strict, as resuming loads
    assert int(copy.queue_count) == 0 and int(copy.queue_pointer) == 0 and int(copy.updates) == 1
    assert copy.queue_identity.eq(UNKNOWN).all() and "queue_identity" not in old
    for a, b in zip(copy.key_encoder.parameters(), moco.key_encoder.parameters()):
        assert torch.equal(a, b)
    # The moving average of the weights (use_buffers=True) holds a copy of the queue too.
    ema = make_ema(moco, 0.9)
    old_ema = {key: value for key, value in ema.state_dict().items() if key != "module.queue_identity"}
    fresh = make_ema(_moco(queue_size=6), 0.9)
    fresh.load_state_dict(old_ema)
    assert int(fresh.module.queue_count) == 0 and fresh.module.queue_identity.eq(UNKNOWN).all()


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
        moco.enqueue(torch.full((3, 3), float(rank)), torch.tensor([True, rank == 0, True]),
                     _identities(*[[rank, 10 * rank + label] for label in range(3)]))
        results[rank] = {"crossed": all(i // 2 != rank for i in order[rank * 2:rank * 2 + 2]),
                         "same": torch.allclose(plain, shuffled, atol=1e-6), "queue": moco.queue[:5].clone(),
                         "identity": moco.queue_identity[:5].clone(), "count": int(moco.queue_count)}
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
    expected = torch.tensor([[0.0] * 3] * 3 + [[1.0] * 3] * 2)  # rank 0's keys, then rank 1's but its padding
    assert torch.equal(results[0]["queue"], expected) and torch.equal(results[1]["queue"], expected)
    identity = [[0, 0], [0, 1], [0, 2], [1, 10], [1, 12]]
    assert results[0]["identity"].tolist() == results[1]["identity"].tolist() == identity
    assert results[0]["count"] == results[1]["count"] == 5
