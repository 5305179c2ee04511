"""How R replicates run as one model: a stacked forward, and the optimizers that allow it.

    forward = stacked_forward(base, params, buffers, sample)   # [R, B, ...] -> [R, B, ...]
    elementwise(configure, key="adam")    # does one optimizer over stacked tensors do R runs?
    linear_in_lr(configure_at, 1e-3, key=...)  # and R runs at several learning rates?

An nn.Sequential of Linear layers and elementwise activations runs straight through
torch.baddbmm on the stacked weights; any other model under torch.vmap. A model vmap cannot
run (random numbers in forward, `.item()`) raises NotStackable before any training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from pipeline.search.engine.module import Configure

_elementwise: dict[Any, bool] = {}  # probe results, per key (the caller's: a family name)
_linear: dict[Any, bool] = {}


class NotStackable(Exception):
    """The model cannot run under torch.vmap; its replicates run one by one."""


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
    optimizer = use_fastest(configure(stacked, 1)[0])
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


def linear_in_lr(
    configure_at: Callable[[float], Configure],
    lr: float,
    device: torch.device | str = "cpu",
    *,
    key: Any,
) -> bool:
    """Whether replicates at learning rates c * lr (0 < c <= 1) can share one optimizer at lr,
    each replicate's step scaled by its c afterwards (rescale_); cached by key.

    True of every conf/optimizer family and schedule: their step, and the lr a schedule sets,
    are proportional to the base lr, and their state (moments, sums of squares) does not
    depend on it. Probed anyway, as elementwise is, since a user's optimizer or schedule (an
    absolute lr floor, a clipped step) may not be: four steps of three replicates at c = 1,
    0.1 and 0.001, schedule stepped after each, against three separate runs.
    """
    if key in _linear:
        return _linear[key]
    device = torch.device(device)
    scales, shapes = (1.0, 0.1, 1e-3), [(5, 4), (5,), (3, 5), (3,)]
    generator = torch.Generator().manual_seed(1)
    singles = [
        [torch.randn(s, generator=generator).to(device).requires_grad_() for s in shapes]
        for _ in scales
    ]
    stacked = [
        torch.stack([p[i].detach() for p in singles]).requires_grad_() for i in range(len(shapes))
    ]
    factors = torch.tensor(scales, device=device)
    same = False
    try:
        optimizer, scheduler, _ = configure_at(lr)(stacked, 4)  # 4 steps fit any schedule
        use_fastest(optimizer)
        separate = [configure_at(lr * c)(p, 4) for c, p in zip(scales, singles, strict=True)]
        for _ in range(4):
            for i, s in enumerate(shapes):
                grads = [torch.randn(s, generator=generator).to(device) for _ in scales]
                for r in range(len(scales)):
                    singles[r][i].grad = grads[r]
                stacked[i].grad = torch.stack(grads)
            before = [p.detach().clone() for p in stacked]
            optimizer.step()
            rescale_(stacked, before, factors)
            scheduler.step()
            for opt, sched, _ in separate:
                opt.step()
                sched.step()
        with torch.no_grad():
            same = all(
                torch.allclose(
                    stacked[i], torch.stack([p[i] for p in singles]), rtol=1e-4, atol=1e-6
                )
                for i in range(len(shapes))
            )
    except Exception:  # a family that cannot even be built this way trains lr by lr
        same = False
    _linear[key] = same
    return same


@torch.no_grad()
def rescale_(params: list[Tensor], before: list[Tensor], scales: Tensor) -> None:
    """Scale each replicate's last step by its own factor: p = before + c_r (p - before).

    One lerp a tensor (exact at c_r = 1); with c_r <= 1 (the group's optimizer at the top of
    the family's lr range) it loses no more than the step's own rounding.
    """
    for p, b in zip(params, before, strict=True):
        torch.lerp(b, p, scales.view(-1, *([1] * (p.dim() - 1))), out=p)


def use_fastest(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
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


def is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        "out of memory" in text or "can't allocate memory" in text
    )


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


def mlp_forward(base: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor] | None:
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


def stacked_forward(
    base: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], sample: Tensor
) -> Callable[[Tensor], Tensor]:
    """The stacked model: [R, B, ...] inputs -> [R, B, ...] outputs, replicate r on slice r."""
    count = next(iter(params.values())).shape[0]
    mlp = mlp_forward(base) if sample.dim() == 2 and not buffers else None
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
    stacked_forward(base, params, buffers, sample)


def per_replicate(loss_fn: Callable[..., Tensor], out: Tensor, y: Tensor) -> Tensor:
    """[R, B, ...] outputs and targets -> [R, B*...] unreduced losses."""
    count = out.shape[0]
    return loss_fn(out.flatten(0, 1), y.flatten(0, 1), reduction="none").reshape(count, -1)


def hits_per_replicate(out: Tensor, y: Tensor, *, binary: bool) -> Tensor:
    """Per replicate: correct predictions in [R, B, ...] outputs against [R, B] labels."""
    if not binary:
        return (out.argmax(dim=-1) == y).sum(1)
    out = out.squeeze(-1) if out.dim() > y.dim() else out
    return ((out > 0).to(y.dtype) == y).sum(1)
