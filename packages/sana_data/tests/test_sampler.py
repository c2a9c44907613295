"""Bucket batch sampler: no sample lost or duplicated across ranks and epochs, resume continues exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sana_data import AspectRatioBatchSampler


def _buckets(n: int = 103, seed: int = 0) -> list[str | None]:
    rng = np.random.default_rng(seed)
    return [rng.choice(["0.6", "1.0", "1.67", "4.0"]) for _ in range(n)]


def _run_epoch(buckets: list, world: int, epoch: int, **kw) -> list[list[list[int]]]:
    samplers = [AspectRatioBatchSampler(buckets, 4, num_replicas=world, rank=r, seed=7, **kw) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return [list(s) for s in samplers]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_partition_each_epoch_and_batches_share_a_bucket(world: int) -> None:
    buckets = _buckets()
    for epoch in range(3):
        per_rank = _run_epoch(buckets, world, epoch)
        assert len({len(r) for r in per_rank}) == 1  # every rank the same number of batches
        assert len(per_rank[0]) == len(AspectRatioBatchSampler(buckets, 4, num_replicas=world, rank=0))
        seen = [i for rank in per_rank for batch in rank for i in batch]
        assert len(seen) == len(set(seen))  # no duplicate across ranks
        dropped = AspectRatioBatchSampler(buckets, 4, num_replicas=world, rank=0, seed=7).dropped(epoch)
        assert sorted(seen + dropped) == list(range(len(buckets)))  # nothing lost: seen + dropped = all
        assert all(len(b) == 4 and len({buckets[i] for i in b}) == 1 for r in per_rank for b in r)
        full = sum(c // 4 for c in np.unique(buckets, return_counts=True)[1])
        assert len(dropped) == len(buckets) - 4 * (full // world * world)  # only bucket remainders + world trim


def test_epochs_differ_and_dropped_samples_rotate() -> None:
    buckets = _buckets()
    epochs = [_run_epoch(buckets, 1, e)[0] for e in range(4)]
    assert epochs[0] != epochs[1]
    seen = set(itertools.chain.from_iterable(itertools.chain.from_iterable(epochs)))
    assert len(seen) > 100  # over a few epochs almost every remainder sample gets its turn
    assert _run_epoch(buckets, 1, 2)[0] == epochs[2]  # deterministic from (seed, epoch)


def test_filtered_indices_are_never_yielded() -> None:
    buckets = _buckets()
    buckets[::3] = [None] * len(buckets[::3])
    seen = {i for b in _run_epoch(buckets, 2, 0)[0] + _run_epoch(buckets, 2, 0)[1] for i in b}
    assert not seen & set(range(0, len(buckets), 3))


def test_drop_last_false_yields_remainders_and_keeps_ranks_in_step() -> None:
    buckets = _buckets()
    per_rank = _run_epoch(buckets, 3, 0, drop_last=False)
    assert len({len(r) for r in per_rank}) == 1
    seen = {i for rank in per_rank for b in rank for i in b}
    assert seen == set(range(len(buckets)))
    assert all(len({buckets[i] for i in b}) == 1 for r in per_rank for b in r)


def test_resume_mid_epoch_continues_exactly() -> None:
    buckets = _buckets(500)
    reference = AspectRatioBatchSampler(buckets, 8, num_replicas=2, rank=1, seed=3)
    full = [b for _ in range(3) for b in reference]  # three whole epochs

    interrupted = AspectRatioBatchSampler(buckets, 8, num_replicas=2, rank=1, seed=3)
    it = iter(interrupted)
    consumed = [next(it) for _ in range(len(interrupted))]  # epoch 0
    it = iter(interrupted)
    consumed += [next(it) for _ in range(5)]  # 5 batches into epoch 1
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 5

    resumed = AspectRatioBatchSampler(buckets, 8, num_replicas=2, rank=1, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what a training loop does at the top of an epoch: keeps the position
    rest = list(resumed) + list(resumed)
    assert consumed + rest == full


def test_state_with_prefetch_uses_consumed_count_and_refuses_other_layouts() -> None:
    buckets = _buckets(200)
    sampler = AspectRatioBatchSampler(buckets, 4, seed=1)
    it = iter(sampler)
    for _ in range(6):
        next(it)  # the DataLoader prefetched 6, training consumed 2
    state = sampler.state_dict(consumed=2)
    resumed = AspectRatioBatchSampler(buckets, 4, seed=1)
    resumed.load_state_dict(state)
    assert next(iter(resumed)) == sampler.batches(0)[2]
    list(it)  # the loader prefetched the whole epoch; training consumed all but the last batch
    assert sampler.state_dict(consumed=len(sampler) - 1)["epoch"] == 0
    assert sampler.state_dict(consumed=len(sampler))["epoch"] == 1
    with pytest.raises(ValueError, match="num_replicas"):
        AspectRatioBatchSampler(buckets, 4, seed=1, num_replicas=2, rank=0).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples"):
        AspectRatioBatchSampler(buckets[:-1], 4, seed=1).load_state_dict(state)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        AspectRatioBatchSampler(["1.0"], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        AspectRatioBatchSampler(["1.0"], 0)
