"""Seed replicates of one configuration (and its other learning rates) trained as one stacked
model, at about the price of one run.

    train_group(make_model, replicates, data, spec)    # search.workers.groups calls it

engine.replicate holds Spec, Replicate and train_one (a seed trained alone, the reference a
stacked replicate reproduces); engine.stacking the stacked forward and the optimizer probe.

Replicates share the optimizer family, its other hyperparameters, the schedule and the batch
size; the seed differs (initial weights, data order) and may the learning rate: a replicate at
c times the group optimizer's lr (Replicate.scale, c <= 1) takes its step scaled by c,
which is its own step for an optimizer and schedule linear in the lr (stacking.linear_in_lr).
The R models' parameters are stacked (torch.func.stack_module_state) and run under
torch.vmap, or, for an nn.Sequential of Linear layers and elementwise activations, straight
through torch.baddbmm on the stacked weights.
Each replicate takes its own mini-batch. The summed loss (each replicate's mean batch loss,
added up) has replicate r's own gradient in slice r, so an optimizer that updates every
element on its own (all of conf/optimizer) performs R independent runs as one.

Replicate r starts where the one-by-one trial with its seed starts: torch.manual_seed(seed)
right before the model is built (pl.seed_everything in pipeline.search.engine.trial), and its epochs
are shuffled by a CPU generator seeded with the seed (as pipeline.search.tasks.data's _Epochs). Its
curve matches that trial's up to float rounding (batched matmuls sum in another order).

Falls back (the caller runs those replicates one by one) when
  * the optimizer mixes elements of a tensor (a norm, as LARS/LAMB use): elementwise() probes
    one stacked optimizer against R separate ones on a tiny network, once per key;
  * the model cannot run under vmap (random numbers in forward such as dropout, `.item()`):
    train_group raises NotStackable before any training.
A group larger than the device's free memory holds (engine.memory) trains in parts, one after
the other; a group that runs out of memory all the same is split in halves, down to single runs.

A diverging replicate (non-finite train loss or metric, or train loss over divergence_factor x
its first step's, as pipeline.search.engine.callbacks.Guarding decides) keeps that epoch's row, gets
`diverged` set and is recorded no further; the others go on (its NaN stays in its own slice
for an elementwise optimizer).

A race run ends at its target (Spec.stop_at), and a round-0 lattice point once Spec.halving of
its group got there first (Replicate.settles): it is scored on the test rows then and recorded
no further, and the group goes on without its slice (_narrow), so a run that ends costs no more
epochs while a slower one of its group trains on; the group stops when none goes on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

from pipeline.search import interrupt
from pipeline.search.engine.losses import FUNCTIONS as LOSSES
from pipeline.search.engine.memory import group_size
from pipeline.search.engine.replicate import (
    Data,
    Replicate,
    Spec,
    batch_sizes,
    current_lr,
    epoch_batches,
    train_one,
)
from pipeline.search.engine.stacking import (
    hits_per_replicate,
    is_oom,
    per_replicate,
    rescale_,
    stacked_forward,
    use_fastest,
)
from pipeline.search.tasks.data import EVAL_CHUNK


def train_group(
    make_model: Callable[[], nn.Module],
    replicates: list[Replicate],
    data: Data,
    spec: Spec,
    *,
    free: int | None = None,
) -> int:
    """Train every replicate (its seed set) as one stacked model, filling each one's result;
    returns the most replicates trained at once.

    The replicates go in as few groups as the device's free memory holds (engine.memory;
    `free`: the bytes free, read from the device when None), one after the other. A group out
    of memory all the same is split in halves (each half restarted, its seconds counted from
    its own start), down to single runs (train_one). Raises NotStackable, before any training,
    for a model vmap cannot run; Interrupted (Ctrl-C) leaves each replicate's epochs so far.
    """
    most = None
    if len(replicates) > 1:
        try:
            most = group_size(make_model, data, spec, free=free)
        except Exception:  # an estimate only: the split on out-of-memory still guards
            most = None
    size = min(most or len(replicates), len(replicates))
    for rep in replicates:
        rep.reset(1)
    for i in range(0, len(replicates), size):
        _train_halving(make_model, replicates[i : i + size], data, spec, peers=replicates)
    return size


def _train_halving(
    make_model: Callable[[], nn.Module],
    replicates: list[Replicate],
    data: Data,
    spec: Spec,
    *,
    peers: list[Replicate],
) -> None:
    """The replicates as one group, or, out of memory, as two halves (each split again).
    `peers`: the whole group, parts trained before these included (spec.halving counts them)."""
    if len(replicates) == 1 and replicates[0].scale == 1.0:
        mine = replicates[0]
        mine.reset(1)
        done = train_one(make_model, mine.seed, data, spec, peers=peers)
        mine.curve, mine.diverged, mine.scores = done.curve, done.diverged, done.scores
        mine.reached, mine.out = done.reached, done.out
        return
    try:
        _train_stacked(make_model, replicates, data, spec, peers=peers)
        return
    except (RuntimeError, MemoryError) as error:
        if len(replicates) == 1 or (not is_oom(error) and not isinstance(error, MemoryError)):
            raise
    # Out of the except block, so the failed group's tensors (held by the traceback) are freed.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for rep in replicates:  # what the failed group reached is trained again
        rep.reset(1)
    half = len(replicates) // 2
    _train_halving(make_model, replicates[:half], data, spec, peers=peers)
    _train_halving(make_model, replicates[half:], data, spec, peers=peers)


def _train_stacked(
    make_model: Callable[[], nn.Module],
    replicates: list[Replicate],
    data: Data,
    spec: Spec,
    *,
    peers: list[Replicate],
) -> None:
    """The replicates as one stacked model and one optimizer. A replicate that settles
    (Replicate.settles) is scored on the test rows then (a diverged one is not, as train_one);
    either is recorded no further and taken out of the stack; the group stops when none goes on."""
    loss_fn = LOSSES[spec.loss]
    x_train, y_train, x_val, y_val = data
    device, n, count = x_train.device, len(x_train), len(replicates)
    started = time.perf_counter()
    for rep in replicates:
        rep.reset(count)
    models = []
    for rep in replicates:
        torch.manual_seed(rep.seed)  # as the trial seeds it, so replicate r starts where it would
        models.append(make_model().to(device))
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    base = copy.deepcopy(models[0]).to("meta")  # only its structure is used
    del models
    run = stacked_forward(base, params, buffers, x_train)

    sizes = batch_sizes(n, spec.batch_size)
    weights = torch.tensor(sizes, dtype=torch.float32, device=device)[:, None]
    generators = [torch.Generator().manual_seed(rep.seed) for rep in replicates]
    stacked = list(params.values())
    optimizer, scheduler, interval = spec.configure(stacked, len(sizes))
    use_fastest(optimizer)
    scales = [rep.scale for rep in replicates]
    factors = None if all(c == 1.0 for c in scales) else torch.tensor(scales, device=device)
    before = [torch.empty_like(p) for p in stacked] if factors is not None else []
    going = [True] * count
    slices = list(range(count))  # the replicate each slice of the stack holds
    first: list[float] | None = None
    steps = 0
    for epoch in range(1, spec.epochs + 1):
        # One CPU randperm per replicate, as the trial draws it, moved once per epoch.
        draws = [torch.randperm(n, generator=generators[r]) for r in slices]
        order = torch.stack(draws).to(device)
        base.train()
        losses: list[Tensor] = []
        for x, y in epoch_batches(x_train, y_train, order, spec.batch_size):
            interrupt.check()
            batch = per_replicate(loss_fn, run(x), y).mean(1)
            optimizer.zero_grad(set_to_none=True)
            batch.sum().backward()  # slice r of each gradient is replicate r's own
            if factors is None:
                optimizer.step()
            else:  # at the group's lr, each replicate's step then scaled to its own
                for b, p in zip(before, stacked, strict=True):
                    b.copy_(p.detach())
                optimizer.step()
                rescale_(stacked, before, factors)
            if first is None:
                first = batch.detach().tolist()  # one sync per group
            if interval == "step":
                scheduler.step()
            losses.append(batch.detach())
        steps += len(sizes)
        train = (torch.stack(losses) * weights).sum(0) / n
        val_loss, val_acc = _score_stacked(run, base, x_val, y_val, spec, len(slices), device)
        rows = torch.stack([train, val_loss, val_acc]).T.tolist()  # the epoch's one sync
        seconds = time.perf_counter() - started
        lr = current_lr(optimizer)
        assert first is not None
        for r, (train_loss, val, acc) in zip(slices, rows, strict=True):
            if going[r]:
                row = {
                    "epoch": epoch,
                    "step": steps,
                    "seconds": seconds,
                    "train_loss": train_loss,
                    "val_loss": val,
                    "val_acc": acc if spec.classify else None,
                    "lr": lr * scales[r],
                }
                going[r] = replicates[r].add(row, first_loss=first[r], spec=spec)
        # Those at the target first, so that the halving counts them in this epoch.
        settled = [r for r in slices if going[r] and replicates[r].reach(spec)]
        settled += [
            r for r in slices if going[r] and r not in settled and replicates[r].beaten(spec, peers)
        ]
        for r in settled:
            going[r] = False
        _score_test(run, base, params, buffers, replicates, slices, settled, spec, x_train)
        if interval == "epoch":
            scheduler.step()
        if not any(going):
            return
        keep = [i for i, r in enumerate(slices) if going[r]]
        if len(keep) < len(slices):  # the ended runs' slices cost nothing more
            params, buffers, optimizer, scheduler = _narrow(
                params, buffers, optimizer, scheduler, keep, spec, len(sizes)
            )
            run = stacked_forward(base, params, buffers, x_train)
            stacked = list(params.values())
            slices = [slices[i] for i in keep]
            if factors is not None:
                factors = factors[torch.tensor(keep, device=device)]
                before = [torch.empty_like(p) for p in stacked]
    last = [r for r in slices if going[r]]  # those that trained every epoch
    _score_test(run, base, params, buffers, replicates, slices, last, spec, x_train)


def _narrow(
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    keep: list[int],
    spec: Spec,
    steps_per_epoch: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor], torch.optim.Optimizer, Any]:
    """The stack's slices `keep` as a group of their own: their parameters, buffers and
    optimizer state, and an optimizer and scheduler where the old ones were (their state
    dicts). Each slice's numbers are its own, so the runs left go on as they would have."""
    old = list(params.values())
    index = torch.tensor(keep, device=old[0].device)
    params, buffers = _take(params, buffers, index)
    state = optimizer.state_dict()
    for i, per in state["state"].items():
        for key, value in per.items():
            if torch.is_tensor(value) and value.shape == old[i].shape:
                per[key] = value[index]
    narrowed, schedule, _ = spec.configure(list(params.values()), steps_per_epoch)
    narrowed.load_state_dict(state)
    schedule.load_state_dict(scheduler.state_dict())
    return params, buffers, narrowed, schedule


def _take(
    params: dict[str, Tensor], buffers: dict[str, Tensor], index: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The stack's slices `index`, as a stack of their own (copies; parameters keep
    requires_grad)."""
    taken = {
        k: v.detach()[index].clone().requires_grad_(v.requires_grad) for k, v in params.items()
    }
    return taken, {k: v[index].clone() for k, v in buffers.items()}


def _score_test(
    run: Callable[[Tensor], Tensor],
    base: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    replicates: list[Replicate],
    slices: list[int],
    which: list[int],
    spec: Spec,
    sample: Tensor,
) -> None:
    """Test scores for the replicates `which`, as their training ends: one stacked pass over
    their slices only (`slices`: the replicate each slice of the stack holds; `sample`: rows
    for the forward's probe), since the test rows may outnumber an epoch's."""
    if spec.test is None or not which:
        return
    if len(which) < len(slices):
        index = torch.tensor([i for i, r in enumerate(slices) if r in which], device=sample.device)
        run = stacked_forward(base, *_take(params, buffers, index), sample)
        slices = [r for r in slices if r in which]
    test_loss, test_acc = _score_stacked(run, base, *spec.test, spec, len(slices), sample.device)
    for r, (loss, acc) in zip(slices, torch.stack([test_loss, test_acc]).T.tolist(), strict=True):
        replicates[r].scores = {"test_loss": loss}
        if spec.classify:
            replicates[r].scores["test_acc"] = acc


def _score_stacked(
    run: Callable[[Tensor], Tensor],
    base: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: Spec,
    count: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """[R] mean losses and [R] accuracies (zeros without classification) on the rows x, y."""
    loss_fn = LOSSES[spec.loss]
    total: Tensor | None = None
    correct: Tensor | None = None
    base.eval()
    with torch.no_grad():
        for i in range(0, len(x), EVAL_CHUNK):
            xb, yb = x[i : i + EVAL_CHUNK].to(device), y[i : i + EVAL_CHUNK].to(device)
            out = run(xb.expand(count, *xb.shape))
            yb = yb.expand(count, *yb.shape)
            part = per_replicate(loss_fn, out, yb).sum(1)
            total = part if total is None else total + part
            if spec.classify:
                hits = hits_per_replicate(out, yb, binary=spec.loss == "bce").to(part.dtype)
                correct = hits if correct is None else correct + hits
    base.train()
    size = max(1, len(x))
    assert total is not None
    mean = total / size
    return mean, (correct / size if correct is not None else torch.zeros_like(mean))
