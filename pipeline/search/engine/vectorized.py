"""Seed replicates of one configuration trained as one stacked model, at about the price of one run.

    pipeline.search.workers.groups trains a confirmation group with train_group(); train_one() is
    the same seed trained alone, the reference a stacked replicate reproduces.

Replicates share the optimizer family, its hyperparameters, the schedule and the batch size;
only the seed differs (initial weights, data order). The R models' parameters are stacked
(torch.func.stack_module_state) and run under torch.vmap, or, for an nn.Sequential of Linear
layers and elementwise activations, straight through torch.baddbmm on the stacked weights.
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
A group that runs out of memory is split in halves, down to single runs.

A diverging replicate (non-finite train loss or metric, or train loss over divergence_factor x
its first step's, as pipeline.search.engine.callbacks.Guarding decides) keeps that epoch's row, gets
`diverged` set and is recorded no further; the others go on (its NaN stays in its own slice
for an elementwise optimizer).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from pipeline.core.record import COLUMNS
from pipeline.search import interrupt
from pipeline.search.engine.losses import FUNCTIONS as LOSSES
from pipeline.search.engine.losses import classifies, n_correct
from pipeline.search.engine.module import Configure
from pipeline.search.tasks.data import EVAL_CHUNK

Data = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_val, y_val, on the device
EPOCH_COPY_BYTES = 256 * 2**20  # gather an epoch's shuffled data at once up to this size
_elementwise: dict[Any, bool] = {}  # probe results, per key (the caller's: a family name)


class NotStackable(Exception):
    """The model cannot run under torch.vmap; its replicates run one by one."""


@dataclass(frozen=True)
class Spec:
    """How every replicate of a group trains (what a trial's choice and config fix)."""

    batch_size: int
    epochs: int
    loss: str  # cross_entropy, bce (both report val_acc) or mse
    configure: Configure  # (parameters, steps_per_epoch) -> (optimizer, scheduler, interval)
    metric: str = "val_loss"
    divergence_factor: float = 10.0
    test: tuple[Tensor, Tensor] | None = None  # held-out rows scored after the last epoch

    @property
    def classify(self) -> bool:
        return classifies(self.loss)


@dataclass
class Replicate:
    """One replicate's result: its curve (record.COLUMNS), why it stopped, its test scores."""

    seed: int
    curve: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    diverged: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    group: int = 1  # how many replicates trained together (1: alone)

    @property
    def epochs(self) -> int:
        return len(self.curve["epoch"])

    def last(self, column: str) -> Any:
        values = self.curve[column]
        return values[-1] if values else None

    def _reset(self, group: int) -> None:
        self.curve = {c: [] for c in COLUMNS}
        self.diverged, self.scores, self.group = None, {}, group

    def _add(self, row: dict[str, Any], *, first_loss: float, spec: Spec) -> bool:
        """Append one epoch's row; False once the replicate has diverged (Guarding's rules)."""
        for column in COLUMNS:
            self.curve[column].append(row[column])
        epoch, loss, value = row["epoch"], row["train_loss"], row[spec.metric]
        factor = spec.divergence_factor
        if not math.isfinite(loss):
            self.diverged = f"diverged at epoch {epoch}: train loss is {loss}"
        elif first_loss > 0 and loss > factor * first_loss:
            self.diverged = (
                f"diverged at epoch {epoch}: train loss {loss:.4g} is over "
                f"{factor:g}x its first step's {first_loss:.4g}"
            )
        elif value is not None and not math.isfinite(value):
            self.diverged = f"diverged at epoch {epoch}: {spec.metric} is {value}"
        return self.diverged is None


def _sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def _epoch_batches(
    x: Tensor, y: Tensor, order: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """An epoch's mini-batches in `order` ([n], or [R, n]: each replicate its own order).

    Gathered once for the epoch when that copy is small: one indexing op instead of one a step.
    """
    n, dim = order.shape[-1], order.dim() - 1
    if order.numel() * (x[:1].nbytes + y[:1].nbytes) <= EPOCH_COPY_BYTES:
        x, y = x[order], y[order]
        for i in range(0, n, batch_size):
            size = min(batch_size, n - i)
            yield x.narrow(dim, i, size), y.narrow(dim, i, size)
    else:
        for i in range(0, n, batch_size):
            index = order[..., i : i + batch_size]
            yield x[index], y[index]


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train_one(make_model: Callable[[], nn.Module], seed: int, data: Data, spec: Spec) -> Replicate:
    """One seed, a plain loop: what the one-by-one trial (TrainModule) computes, no Lightning."""
    loss_fn = LOSSES[spec.loss]
    x_train, y_train, x_val, y_val = data
    device, n = x_train.device, len(x_train)
    torch.manual_seed(seed)
    model = make_model().to(device)
    generator = torch.Generator().manual_seed(seed)  # on the CPU, as _Epochs draws it
    optimizer, scheduler, interval = spec.configure(
        model.parameters(), len(_sizes(n, spec.batch_size))
    )
    result = Replicate(seed)
    started = time.perf_counter()
    first: float | None = None
    steps = 0
    for epoch in range(1, spec.epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        model.train()
        total = torch.zeros((), device=device)
        for x, y in _epoch_batches(x_train, y_train, order, spec.batch_size):
            interrupt.check()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if first is None:
                first = float(loss.detach())
            steps += 1
            if interval == "step":
                scheduler.step()
            total += loss.detach() * len(y)
        val_loss, val_acc = _score_one(model, x_val, y_val, spec)
        row = {
            "epoch": epoch,
            "step": steps,
            "seconds": time.perf_counter() - started,
            "train_loss": float(total / n),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": _lr(optimizer),
        }
        going = result._add(row, first_loss=first or 0.0, spec=spec)
        if interval == "epoch":
            scheduler.step()  # after the row: the curve shows the lr this epoch used
        if not going:
            return result
    if spec.test is not None:
        test_loss, test_acc = _score_one(model, *spec.test, spec)
        result.scores = {"test_loss": test_loss}
        if test_acc is not None:
            result.scores["test_acc"] = test_acc
    return result


def _score_one(model: nn.Module, x: Tensor, y: Tensor, spec: Spec) -> tuple[float, float | None]:
    loss_fn, device = LOSSES[spec.loss], next(model.parameters()).device
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), EVAL_CHUNK):
            xb, yb = x[i : i + EVAL_CHUNK].to(device), y[i : i + EVAL_CHUNK].to(device)
            out = model(xb)
            total += loss_fn(out, yb, reduction="sum")
            if spec.classify:
                correct += n_correct(out, yb, binary=spec.loss == "bce")
    model.train()
    count = max(1, len(x))
    return float(total / count), float(correct / count) if spec.classify else None


# --- the elementwise probe ------------------------------------------------------------------


def elementwise(configure: Configure, device: torch.device | str = "cpu", *, key: Any) -> bool:
    """Whether one optimizer over stacked tensors does what R separate ones do (cached by key).

    Three steps on the parameter shapes of a tiny network (2-D weights, 1-D biases), each
    replicate's parameters and gradients at a different scale so that a norm would couple them.
    """
    if key in _elementwise:
        return _elementwise[key]
    device = torch.device(device)
    replicates, shapes = 3, [(5, 4), (5,), (3, 5), (3,)]
    generator = torch.Generator().manual_seed(0)
    singles = [
        [(torch.randn(s, generator=generator) * 4.0**r).to(device).requires_grad_() for s in shapes]
        for r in range(replicates)
    ]
    stacked = [
        torch.stack([p[i].detach() for p in singles]).requires_grad_() for i in range(len(shapes))
    ]
    optimizer = _foreach(configure(stacked, 1)[0])
    separate = [configure(p, 1)[0] for p in singles]
    for _ in range(3):
        for i, s in enumerate(shapes):
            grads = [
                (torch.randn(s, generator=generator) * 3.0**r).to(device) for r in range(replicates)
            ]
            for r in range(replicates):
                singles[r][i].grad = grads[r]
            stacked[i].grad = torch.stack(grads)
        optimizer.step()
        for opt in separate:
            opt.step()
    with torch.no_grad():
        same = all(
            torch.allclose(stacked[i], torch.stack([p[i] for p in singles]), rtol=1e-5, atol=1e-7)
            for i in range(len(shapes))
        )
    _elementwise[key] = same
    return same


def _foreach(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The fastest implementation the optimizer has here, where the family left it unset.

    torch picks its multi-tensor (foreach) code by itself only on CUDA. A stacked model has
    a few large tensors, so one fused kernel (Adam, AdamW, SGD, Adagrad) or one call per
    operation (foreach) replaces the per-tensor Python loop of each step. Same arithmetic.
    """
    fused = _fused_ok(optimizer)
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("foreach") is not None:
            continue  # the family chose
        if fused:
            group["fused"], group["foreach"] = True, False
        elif "foreach" in group:
            group["foreach"] = True
    return optimizer


_FUSED: dict[tuple[type, str], bool] = {}


def _fused_ok(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's class takes fused=True for tensors on its parameters' device."""
    if "fused" not in optimizer.defaults or optimizer.defaults.get("differentiable"):
        return False
    device = optimizer.param_groups[0]["params"][0].device
    key = (type(optimizer), device.type)
    if key not in _FUSED:
        probe = torch.zeros(1, device=device, requires_grad=True)
        kwargs = {**optimizer.defaults, "fused": True, "foreach": None}
        try:
            type(optimizer)([probe], **kwargs)
            _FUSED[key] = True
        except (RuntimeError, ValueError, TypeError):
            _FUSED[key] = False
    return _FUSED[key]


# --- the stacked group ----------------------------------------------------------------------


def is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        "out of memory" in text or "can't allocate memory" in text
    )


def train_group(
    make_model: Callable[[], nn.Module],
    replicates: list[Replicate],
    data: Data,
    spec: Spec,
) -> None:
    """Train every replicate (its seed set) as one stacked model, filling each one's result.

    A group out of memory is split in halves (each half restarted, its seconds counted from its
    own start), down to single runs (train_one). Raises NotStackable, before any training, for
    a model vmap cannot run; Interrupted (Ctrl-C) leaves each replicate's epochs so far.
    """
    if len(replicates) == 1:
        replicates[0]._reset(1)
        done = train_one(make_model, replicates[0].seed, data, spec)
        replicates[0].curve, replicates[0].diverged = done.curve, done.diverged
        replicates[0].scores = done.scores
        return
    try:
        _train_stacked(make_model, replicates, data, spec)
        return
    except (RuntimeError, MemoryError) as error:
        if not is_oom(error) and not isinstance(error, MemoryError):
            raise
    # Out of the except block, so the failed group's tensors (held by the traceback) are freed.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(replicates) // 2
    train_group(make_model, replicates[:half], data, spec)
    train_group(make_model, replicates[half:], data, spec)


# Parameter-free modules that act on each element alone: any leading shape is fine for them.
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
)


def _mlp_forward(base: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor] | None:
    """A batched forward for an nn.Sequential of Linear layers and elementwise activations.

    torch.baddbmm straight on the stacked weights skips vmap's and functional_call's per-op
    work, a third of a step for the digits MLP on a CPU. None for any other model.
    """
    if not isinstance(base, nn.Sequential) or len(base) == 0:
        return None
    plan: list[tuple[str, str | None] | nn.Module] = []
    for name, layer in base.named_children():
        if type(layer) is nn.Linear:
            plan.append((f"{name}.weight", f"{name}.bias" if layer.bias is not None else None))
        elif isinstance(layer, _ELEMENTWISE) and not list(layer.parameters()):
            plan.append(layer)
        else:
            return None

    def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:  # x: [R, B, in]
        for step in plan:
            if isinstance(step, nn.Module):
                x = step(x)
                continue
            weight, bias = step
            w = params[weight].transpose(1, 2)
            x = torch.bmm(x, w) if bias is None else torch.baddbmm(params[bias][:, None], x, w)
        return x

    return forward


def _forward(
    base: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], sample: Tensor
) -> Callable[[Tensor], Tensor]:
    """The stacked model: [R, B, ...] inputs -> [R, B, ...] outputs, replicate r on slice r."""
    count = next(iter(params.values())).shape[0]
    mlp = _mlp_forward(base) if sample.dim() == 2 and not buffers else None
    if mlp is not None:
        return lambda x: mlp(params, x)

    def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, (p, b), (x,))

    # randomness="error": a model drawing random numbers could not match its seed's own run.
    vmapped = torch.vmap(one, randomness="error")
    try:  # on copies of the buffers, which a training forward may update (BatchNorm)
        base.train()
        probe = sample[:2]
        with torch.no_grad():
            copies = {k: v.clone() for k, v in buffers.items()}
            vmapped(params, copies, probe.expand(count, *probe.shape))
    except Exception as error:
        if is_oom(error):
            raise
        raise NotStackable(str(error).strip().splitlines()[0]) from error
    return lambda x: vmapped(params, buffers, x)


def check_stackable(make_model: Callable[[], nn.Module], sample: Tensor) -> None:
    """Raise NotStackable when two replicates of the model cannot run stacked (on CPU rows)."""
    models = [make_model(), make_model()]
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    base = copy.deepcopy(models[0]).to("meta")
    _forward(base, params, buffers, sample)


def _per_replicate(loss_fn: Callable[..., Tensor], out: Tensor, y: Tensor) -> Tensor:
    """[R, B, ...] outputs and targets -> [R, B*...] unreduced losses."""
    count = out.shape[0]
    return loss_fn(out.flatten(0, 1), y.flatten(0, 1), reduction="none").reshape(count, -1)


def _correct(out: Tensor, y: Tensor, *, binary: bool) -> Tensor:
    """Per replicate: correct predictions in [R, B, ...] outputs against [R, B] labels."""
    if not binary:
        return (out.argmax(dim=-1) == y).sum(1)
    out = out.squeeze(-1) if out.dim() > y.dim() else out
    return ((out > 0).to(y.dtype) == y).sum(1)


def _train_stacked(
    make_model: Callable[[], nn.Module], replicates: list[Replicate], data: Data, spec: Spec
) -> None:
    """The replicates as one stacked model and one optimizer."""
    loss_fn = LOSSES[spec.loss]
    x_train, y_train, x_val, y_val = data
    device, n, count = x_train.device, len(x_train), len(replicates)
    started = time.perf_counter()
    for rep in replicates:
        rep._reset(count)
    models = []
    for rep in replicates:
        torch.manual_seed(rep.seed)  # as the trial seeds it, so replicate r starts where it would
        models.append(make_model().to(device))
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    base = copy.deepcopy(models[0]).to("meta")  # only its structure is used
    del models
    run = _forward(base, params, buffers, x_train)

    sizes = _sizes(n, spec.batch_size)
    weights = torch.tensor(sizes, dtype=torch.float32, device=device)[:, None]
    generators = [torch.Generator().manual_seed(rep.seed) for rep in replicates]
    optimizer, scheduler, interval = spec.configure(list(params.values()), len(sizes))
    _foreach(optimizer)
    going = [True] * count
    first: list[float] | None = None
    steps = 0
    for epoch in range(1, spec.epochs + 1):
        # One CPU randperm per replicate, as the trial draws it, moved once per epoch.
        order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        base.train()
        losses: list[Tensor] = []
        for x, y in _epoch_batches(x_train, y_train, order, spec.batch_size):
            interrupt.check()
            batch = _per_replicate(loss_fn, run(x), y).mean(1)
            optimizer.zero_grad(set_to_none=True)
            batch.sum().backward()  # slice r of each gradient is replicate r's own
            optimizer.step()
            if first is None:
                first = batch.detach().tolist()  # one sync per group
            if interval == "step":
                scheduler.step()
            losses.append(batch.detach())
        steps += len(sizes)
        train = (torch.stack(losses) * weights).sum(0) / n
        val_loss, val_acc = _score_stacked(run, base, x_val, y_val, spec, count, device)
        rows = torch.stack([train, val_loss, val_acc]).T.tolist()  # the epoch's one sync
        seconds = time.perf_counter() - started
        lr = _lr(optimizer)
        assert first is not None
        for r, (train_loss, val, acc) in enumerate(rows):
            if going[r]:
                row = {
                    "epoch": epoch,
                    "step": steps,
                    "seconds": seconds,
                    "train_loss": train_loss,
                    "val_loss": val,
                    "val_acc": acc if spec.classify else None,
                    "lr": lr,
                }
                going[r] = replicates[r]._add(row, first_loss=first[r], spec=spec)
        if interval == "epoch":
            scheduler.step()
        if not any(going):
            return
    if spec.test is not None:
        test_loss, test_acc = _score_stacked(run, base, *spec.test, spec, count, device)
        for r, (loss, acc) in enumerate(torch.stack([test_loss, test_acc]).T.tolist()):
            if going[r]:
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
            part = _per_replicate(loss_fn, out, yb).sum(1)
            total = part if total is None else total + part
            if spec.classify:
                hits = _correct(out, yb, binary=spec.loss == "bce").to(part.dtype)
                correct = hits if correct is None else correct + hits
    base.train()
    size = max(1, len(x))
    assert total is not None
    mean = total / size
    return mean, (correct / size if correct is not None else torch.zeros_like(mean))
