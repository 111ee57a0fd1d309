"""FSDP for the policy modules: FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's
``ModelParallelStrategy``, with the full weights gathered for rollouts and for each update.

Why not sharded forwards: the rollout engine calls the model outside the training forward, on every rank, a number
of times that depends on that rank's episodes (turns, generated tokens, candidate rows), and an update on a large
batch scores it in a number of micro-batches that depends on the rank's batch. A sharded forward all-gathers each
layer's parameters, a collective every rank must join the same number of times: uneven calls would deadlock (or
pair one rank's layer 3 with another's layer 1). So the weights are gathered once, on every rank together, before a
collection and before an update, and the forwards and backwards in between communicate nothing:

- :func:`full_parameters` all-gathers every sharded module (one collective per module, the same on every rank) and
  keeps the full parameters until it exits, however many forwards run inside; then it frees them again.
- during an update it also keeps each rank's gradients unreduced (``set_requires_gradient_sync(False)``: they
  accumulate locally over any number of passes), and :func:`reduce_gradients` ends the update with one backward pass
  every rank runs once (a one-token forward times zero, which adds nothing): FSDP then reduce-scatters the
  accumulated gradients, averaged over ranks exactly as DDP averages them, and the optimiser steps on its shard.

Memory: between steps each rank holds 1/N of the weights, gradients and optimiser state (AdamW's two moments are
twice the trainable weights in fp32: for a 1.5B policy trained in full, 12 GB that DDP keeps whole on every GPU).
During a collection each rank holds the full weights, and during an update the full weights and the full gradients
of the trainable weights (only the adapters' with LoRA). That is what DDP holds at every moment, so a model that fits
for DDP's forward and backward fits here, with the optimiser state sharded; it is the trade-off for a 1.5B policy,
not for a model whose full weights do not fit on one device (those need layer-by-layer gathering in the training
forward, which these variable-length rollouts do not allow, or tensor parallelism, which dg does not do).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from dg_core import ConfigError

__all__ = [
    "FSDP2Strategy",
    "full_parameters",
    "full_state_dict",
    "reduce_gradients",
    "shard_model",
    "sharded_modules",
]

_RESHARD_AFTER_FORWARD = "_dg_reshard_after_forward"
"""Attribute :func:`shard_model` leaves on each sharded module: its own ``reshard_after_forward``, restored on exit."""


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel training of dg-rl's policy modules over every process (no tensor parallelism).

    Lightning's ``ModelParallelStrategy`` with one data-parallel dimension as large as the world; the modules shard
    themselves in ``configure_model`` (:func:`shard_model`). Runs on CPU with gloo as well as on CUDA with NCCL.
    Checkpoints are single files (full weights and optimiser state gathered on rank 0), like DDP's.

    Args:
        save_distributed_checkpoint: Save one shard per rank in a checkpoint folder instead.
        **kwargs: Other ``ModelParallelStrategy`` arguments (``process_group_backend``, ``timeout``).
    """

    def __init__(self, *, save_distributed_checkpoint: bool = False, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        # Known before the processes join: every process holds one shard, none splits a layer's tensors.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def refuse_unsupported_strategy(strategy: object, module: str) -> None:
    """Refuse a Lightning strategy that would shard the policy behind the rollout engine's back: FSDP1
    (``strategy="fsdp"``, whose sharded forwards deadlock on ranks' uneven rollouts) and DeepSpeed."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if isinstance(strategy, FSDPStrategy | DeepSpeedStrategy):
        raise ConfigError(
            f"{module}: Lightning's {type(strategy).__name__} is not supported: rollouts run the policy outside the "
            "training forward, a different number of times on each rank, which its sharded forwards cannot do; use "
            "strategy=dg_rl.FSDP2Strategy() (FSDP2, weights gathered for rollouts and updates) or 'ddp'"
        )


def sharded_modules(*modules: nn.Module) -> list[FSDPModule]:
    """Every FSDP2-sharded module in ``modules`` (and their children), each once, outermost last."""
    found: dict[int, FSDPModule] = {}
    for module in modules:
        for child in module.modules():
            if isinstance(child, FSDPModule):
                found.setdefault(id(child), child)
    return list(reversed(found.values()))


def _layer_classes(model: nn.Module) -> set[str]:
    """Names of the classes transformers never splits across devices: the decoder layers, one FSDP unit each."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def broadcast_weights(module: nn.Module, device: torch.device) -> None:
    """Give every rank rank 0's weights and buffers (what DDP does when it wraps a module).

    FSDP2 shards each rank's own values, so ranks that built their models differently (LoRA adapters initialised
    from unseeded random state) would otherwise train a mix of them. Each tensor goes through ``device`` (NCCL
    broadcasts device tensors only), one at a time.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            staged = tensor.detach().to(device)
            dist.broadcast(staged, src=0)
            if staged is not tensor:
                tensor.copy_(staged)


def shard_model(model: nn.Module, mesh: Any) -> None:
    """Shard ``model`` (a transformers causal LM, peft-wrapped or not) over ``mesh`` with FSDP2, in place.

    Each decoder layer is one unit, freed after its forward; the rest (embeddings, final norm, LM head, LoRA's
    wrapper) is the root unit. Frozen weights (LoRA's base model) are sharded too; only trainable ones get gradients.
    Call :func:`broadcast_weights` first unless every rank built the same weights.
    """
    if sharded_modules(model):
        return
    layers = _layer_classes(model)
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
            setattr(module, _RESHARD_AFTER_FORWARD, True)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)  # the root's weights are used first in backward
    setattr(model, _RESHARD_AFTER_FORWARD, False)


def shard_module(module: nn.Module, mesh: Any) -> None:
    """Shard a small module (a value head) as one FSDP2 unit of its own."""
    if not sharded_modules(module):
        fully_shard(module, mesh=mesh, reshard_after_forward=False)
        setattr(module, _RESHARD_AFTER_FORWARD, False)


def _set_gradient_sync(modules: Sequence[FSDPModule], sync: bool) -> None:
    for module in modules:
        module.set_requires_gradient_sync(sync, recurse=False)


@contextmanager
def full_parameters(*modules: nn.Module, accumulate: bool = False) -> Iterator[bool]:
    """Gather the full weights of every FSDP2-sharded module in ``modules`` for the duration of the block.

    Every rank must enter it together (it all-gathers once per sharded module); inside, any number of forwards (and,
    with ``accumulate``, backwards) run on each rank without communicating, so ranks may differ in how many they run.
    Yields whether anything was sharded; for plain modules (single device, DDP) it does nothing and yields False.

    Args:
        modules: Modules that may hold FSDP2-sharded submodules.
        accumulate: For an update: gradients accumulate on each rank without being reduced, and the parameters stay
            gathered through backward. End the block's update with :func:`reduce_gradients` before it exits.
    """
    sharded = sharded_modules(*modules)
    if not sharded:
        yield False
        return
    for module in sharded:
        module.unshard()
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
        if accumulate:
            module.set_reshard_after_backward(False, recurse=False)
    if accumulate:
        _set_gradient_sync(sharded, False)
    try:
        yield True
    finally:
        for module in sharded:
            module.set_reshard_after_forward(bool(getattr(module, _RESHARD_AFTER_FORWARD, True)), recurse=False)
            if accumulate:
                module.set_reshard_after_backward(True, recurse=False)
        if accumulate:
            _set_gradient_sync(sharded, True)
        for module in sharded:
            module.reshard()


def reduce_gradients(modules: Sequence[nn.Module], zero_loss: torch.Tensor, backward: Any = None) -> None:
    """Inside ``full_parameters(..., accumulate=True)``: reduce-scatter the gradients every rank accumulated.

    ``zero_loss`` must be ``0 * (something computed by a forward through each sharded root in modules)``; its
    backward adds nothing to any gradient and makes FSDP reduce each unit's accumulated gradient once, on every rank
    in the same order. Every rank calls this exactly once per update.

    Args:
        modules: The modules given to :func:`full_parameters`.
        zero_loss: The zero-valued loss through every sharded root.
        backward: How to run backward (a LightningModule's ``manual_backward``); ``zero_loss.backward`` by default.
    """
    sharded = sharded_modules(*modules)
    if not sharded:
        raise ConfigError("reduce_gradients: nothing in these modules is sharded with FSDP2")
    _set_gradient_sync(sharded, True)
    (backward or (lambda loss: loss.backward()))(zero_loss)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average each parameter's gradient over all ranks (a missing gradient counts as zeros), one all-reduce per
    parameter in the given order; every rank calls it once per update with the same parameters."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad.div_(world)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of ``model`` whole, on the CPU, under the names of a plain copy of it (to save a sharded policy:
    load it into an unsharded model of the same architecture). Under FSDP2 every rank must call it (it gathers)."""
    if not sharded_modules(model):
        return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (a DTensor), or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor
