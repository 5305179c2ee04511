"""How many replicates of a group fit the device's memory at once, measured before training.

    size = group_size(make_model, data, spec)    # engine.vectorized.train_group splits by it

A stacked group of R replicates holds R copies of everything one run holds: its parameters,
their gradients, the optimizer's state, the tensors its forward saves for backward at the
batch size, and the outputs of one validation chunk; and the epochs' shuffled copies of the
training rows, at most EPOCH_COPY_BYTES in all. replicate_bytes measures the first on one
model (a forward, backward and optimizer step on a real batch, saved tensors counted through
torch.autograd.graph.saved_tensors_hooks), so it holds for any model, on any device. The
group takes at most FREE_SHARE of the memory free on the device (CUDA:
torch.cuda.mem_get_info; CPU: MemAvailable). Splitting on out-of-memory (train_group) stays
as the backstop for what the estimate misses (allocator fragmentation, kernels' workspaces).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.search.engine.losses import FUNCTIONS as LOSSES
from pipeline.search.engine.replicate import EPOCH_COPY_BYTES, Data, Spec
from pipeline.search.tasks.data import EVAL_CHUNK

FREE_SHARE = 0.7  # of the free memory a group may plan to use; the rest is headroom


def free_bytes(device: torch.device) -> int | None:
    """Memory free on the device now (None: unknown, no limit applied)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def replicate_bytes(make_model: Callable[[], nn.Module], data: Data, spec: Spec) -> int:
    """Bytes one more replicate adds to a stacked group (see the module)."""
    x_train, y_train, x_val, _ = data
    device = x_train.device
    model = make_model().to(device)
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    saved = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    batch = slice(0, min(spec.batch_size, len(x_train)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = LOSSES[spec.loss](model(x_train[batch]), y_train[batch])
    loss.backward()
    optimizer, _, _ = spec.configure(params, 1)
    optimizer.step()
    state = sum(
        t.numel() * t.element_size()
        for values in optimizer.state.values()
        for t in values.values()
        if isinstance(t, Tensor)
    )
    outputs = _largest_output(model, x_val[:EVAL_CHUNK]) if len(x_val) else 0
    # parameters, gradients, the step's copy (rescale_), the state, what backward keeps, and a
    # validation chunk's two live layers (its input is one tensor expanded, shared).
    return 3 * weights + state + saved + 2 * outputs


def _largest_output(model: nn.Module, x: Tensor) -> int:
    """The largest tensor a layer of the model outputs on the rows x, in bytes."""
    largest = 0

    def hook(_module: nn.Module, _inputs: object, out: object) -> None:
        nonlocal largest
        if isinstance(out, Tensor):
            largest = max(largest, out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return largest


def group_size(
    make_model: Callable[[], nn.Module], data: Data, spec: Spec, *, free: int | None = None
) -> int | None:
    """The most replicates that fit at once (None: no limit known). `free`: the bytes free,
    read from the device when not given."""
    free = free_bytes(data[0].device) if free is None else free
    if free is None:
        return None
    each = replicate_bytes(make_model, data, spec)
    # Plus the epoch's shuffled rows: a copy per replicate while R copies fit EPOCH_COPY_BYTES
    # (replicate.epoch_batches), else gathered batch by batch.
    budget, rows = FREE_SHARE * free, len(data[0]) * (data[0][:1].nbytes + data[1][:1].nbytes)
    copied = min(budget // (each + rows), EPOCH_COPY_BYTES // max(1, rows))
    gathered = (budget - EPOCH_COPY_BYTES) // each
    return max(1, int(gathered if gathered * rows > EPOCH_COPY_BYTES else copied))
