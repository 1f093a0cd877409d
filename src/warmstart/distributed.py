"""Where models run and how training spreads over processes: devices, process groups, FSDP2.

One typed block, :class:`ParallelConfig` (a stage's ``[parallel]`` table; the study fills it
from its ``[run]`` table), says

* ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under a distributed launch
  (``WORLD_SIZE > 1``) every rank uses the GPU of its ``LOCAL_RANK`` (``"cuda"``);
* ``strategy``: ``"ddp"`` (a full replica per process, gradients summed once per update:
  one process is plain single-device training) or ``"fsdp"`` (PyTorch FSDP2,
  ``torch.distributed.fsdp.fully_shard``: parameters, gradients and optimizer state sharded
  over the processes);
* ``activation_checkpointing``: recompute each decoder layer / vision block in backward;
* ``lora``: train LoRA adapters only (the low-memory alternative to sharding).

Mixed precision is the stage's ``optim.dtype``: ``"bfloat16"`` computes in bf16 while the
optimizer keeps fp32 master weights and fp32 Adam state (FSDP2's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``; autocast under ``ddp``).
Pure bf16 weights with Adam at lr 1e-6 do not learn (issue 13, item 5): a bf16 weight of
magnitude 0.02 cannot move by 1e-6.

FSDP2 units (:func:`shard_model`): every text decoder layer, every vision block, the LM head
and the base model (``model.model``: embeddings, final norm, the vision tower's patch
embedding and merger). The top-level ``...ForConditionalGeneration`` is *not* a unit: it
owns no parameters of its own, and leaving it out lets the scorer call the base model and
the LM head separately (:mod:`warmstart.scoring`), each through its own FSDP hooks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from warmstart.config import ConfigError
from warmstart.models.load import LoraSpec, unwrap_model

__all__ = [
    "ParallelConfig",
    "all_reduce_sum",
    "barrier",
    "collective_device",
    "compute_dtype",
    "full_state_dict",
    "full_weights",
    "init_distributed",
    "is_sharded",
    "local_rank",
    "rank",
    "resolve_device",
    "set_compute_dtype",
    "shard_model",
    "world_size",
]

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class ParallelConfig:
    """Device placement and the training strategy of a stage (its ``[parallel]`` table).

    Attributes:
        device: ``"cpu"``, ``"cuda"`` (the current GPU; under a launch of several
            processes, rank r's ``cuda:LOCAL_RANK``) or ``"cuda:N"`` (one process only).
            Every model of the stage goes there: the policy, the GRPO reference, an
            in-process teacher, the evaluated model.
        strategy: ``"ddp"``: every process holds the whole model and the global batch,
            takes every N-th micro-batch and the gradients are summed once per update
            (one process: plain training). ``"fsdp"``: FSDP2 (``fully_shard``) shards
            parameters, gradients and optimizer state over the processes (the trainer then
            keeps only ``1/N`` of the fp32 master weights and Adam state per GPU).
        activation_checkpointing: keep only each layer's input in forward and recompute the
            layer in backward (transformers' ``gradient_checkpointing_enable``, non-reentrant):
            activation memory of one layer instead of all, for about a third more compute.
        reshard_after_forward: ``fsdp`` only: free every unit's gathered parameters after its
            forward and gather them again in backward (ZeRO-3, least memory). ``False`` keeps
            them until backward (ZeRO-2-like: one all-gather less per unit, the full bf16
            model held during every micro-batch).
        lora: train LoRA adapters (``[parallel.lora]``: r, alpha, dropout, target_modules)
            on the language model instead of every weight; the base stays frozen. Checkpoints
            hold the merged weights (loadable as plain checkpoints) and the adapters. Not
            combined with ``fsdp`` (one or the other is the memory saver).
    """

    device: str = "cpu"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    lora: LoraSpec | None = None

    def validate(self) -> None:
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.lora is not None and self.strategy == "fsdp":
            raise ConfigError(
                "lora with strategy 'fsdp' is not supported: LoRA is the low-memory alternative "
                "to sharding; use strategy 'ddp' with lora, or fsdp without it"
            )
        if self.lora is not None and self.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.lora.r}")


# ---- processes ----------------------------------------------------------------------------


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE``; 1 for a plain run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 for a plain run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str) -> torch.device:
    """The torch device of this process for a configured ``device`` (see :class:`ParallelConfig`).

    Raises a one-line :class:`ConfigError` when CUDA is asked for and no GPU is visible,
    or when a fixed ``cuda:N`` is given under a launch of several processes.
    """
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device = {device!r} but no GPU is visible to torch (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            "set device = 'cpu' or run on a machine with a GPU"
        )
    n_gpus = torch.cuda.device_count()
    if world_size() > 1:
        if device != "cuda":
            raise ConfigError(
                f"device = {device!r} under a launch of {world_size()} processes: give device = 'cuda' "
                "(each rank then uses the GPU of its LOCAL_RANK)"
            )
        index = local_rank()
    else:
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
    if index >= n_gpus:
        raise ConfigError(f"device cuda:{index} does not exist: {n_gpus} GPU(s) are visible")
    return torch.device("cuda", index)


def init_distributed(device: torch.device | str = "cpu") -> bool:
    """Join the process group of a ``torchrun`` / ``accelerate launch`` start (idempotent).

    NCCL for CUDA devices, gloo for CPU. Returns whether this run has several processes.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return True


def collective_device() -> torch.device:
    """The device a tensor must be on for this process group's collectives (NCCL: this GPU)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes (a new tensor on ``t``'s device; ``t`` itself unchanged)."""
    import torch.distributed as dist

    buf = t.detach().to(collective_device(), copy=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def barrier() -> None:
    """Wait for every process (no-op for a plain run)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def check_launch_env(cfg: ParallelConfig, dtype: str) -> None:
    """Refuse a launcher config that contradicts the stage's (one clear line, before any load).

    ``accelerate launch --config_file configs/accelerate/fsdp-*.yaml`` exports what the file
    says (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``ACCELERATE_MIXED_PRECISION``); warmstart
    shards the model itself from its own config, so the two must agree.
    """
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if cfg.strategy != "fsdp":
            raise ConfigError(
                "accelerate was launched with an FSDP config but the stage's parallel.strategy is "
                f"{cfg.strategy!r}: set parallel.strategy = 'fsdp' (or launch without --config_file)"
            )
        if env.get("FSDP_VERSION", "2") != "2":
            raise ConfigError(
                f"accelerate config has fsdp_version {env['FSDP_VERSION']}; warmstart uses FSDP2 "
                "(fsdp_version: 2)"
            )
    mp = env.get("ACCELERATE_MIXED_PRECISION", "")
    if mp in ("bf16", "fp16", "no") and (mp == "bf16") != (dtype == "bfloat16"):
        raise ConfigError(
            f"accelerate config has mixed_precision {mp!r} but the stage's optim.dtype is {dtype!r}: "
            "make them agree (bf16 <-> 'bfloat16', no <-> 'float32')"
        )


# ---- compute dtype (mixed precision without FSDP) ----------------------------------------

_COMPUTE_DTYPE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_compute_dtype(model: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Run ``model``'s scoring forwards under ``torch.autocast(dtype)`` (its weights stay fp32)."""
    inner = unwrap_model(model)
    if dtype is None:
        _COMPUTE_DTYPE.pop(inner, None)
    else:
        _COMPUTE_DTYPE[inner] = dtype


def compute_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The autocast dtype :func:`set_compute_dtype` gave ``model`` (None: its own dtype)."""
    return _COMPUTE_DTYPE.get(unwrap_model(model))


@contextlib.contextmanager
def autocast_for(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` in the model's compute dtype when one was set, else nothing."""
    dtype = compute_dtype(model)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


# ---- FSDP2 -------------------------------------------------------------------------------


def _fsdp_module_class():
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def is_sharded(model: Any) -> bool:
    """Whether any module of ``model`` is an FSDP2 unit."""
    cls = _fsdp_module_class()
    return any(isinstance(m, cls) for m in unwrap_model(model).modules())


def _units(inner: torch.nn.Module) -> tuple[list[torch.nn.Module], torch.nn.Module, torch.nn.Module]:
    """(per-layer units, base model, LM head) of a Qwen2.5-VL / Qwen2-VL ``...ForConditionalGeneration``."""
    base = getattr(inner, "model", None)
    head = getattr(inner, "lm_head", None)
    if base is None or head is None:
        raise TypeError(f"cannot shard {type(inner).__name__}: expected .model and .lm_head")
    layers: list[torch.nn.Module] = []
    visual = getattr(base, "visual", None)
    if visual is not None:
        layers += list(getattr(visual, "blocks", []))
    lm = getattr(base, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise TypeError(f"cannot shard {type(inner).__name__}: no language_model.layers")
    layers += list(lm.layers)
    return layers, base, head


def shard_model(model: Any, cfg: ParallelConfig, *, bf16: bool) -> Any:
    """Apply FSDP2 to a loaded (fp32) model in place, unit by unit; returns the same object.

    Args:
        model: a Qwen2.5-VL on this rank's device, fp32 parameters (the master weights).
        cfg: its parallel config (``reshard_after_forward``).
        bf16: compute in bf16 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``);
            gradients are reduced and kept in fp32, so Adam updates fp32 master weights.

    Gradients are *summed* over ranks (divide factor 1): the trainer divides every
    micro-batch's loss by the global token count, as a single process does.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from warmstart.scoring import make_scoring_head

    inner = unwrap_model(model)
    if getattr(inner.config, "tie_word_embeddings", False) or getattr(
        getattr(inner.config, "text_config", None), "tie_word_embeddings", False
    ):
        raise ConfigError(
            "strategy 'fsdp' needs an untied LM head (the head and the embeddings are separate "
            "FSDP units); this checkpoint ties them (tie_word_embeddings = true)"
        )
    layers, base, head = _units(inner)
    make_scoring_head(head)
    # The base model's output is a view; the scorer only gathers rows out of it (no in-place
    # op that could skip FSDP's pre-backward hook), so FSDP's warning about it is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32,
    )
    kw = dict(mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    for layer in layers:
        fully_shard(layer, **kw)
    fully_shard(head, **kw)
    fully_shard(base, **kw)
    fsdp_cls = _fsdp_module_class()
    for m in inner.modules():
        if isinstance(m, fsdp_cls):
            m.set_gradient_divide_factor(1.0)
            # a plain SUM collective (gloo has no PREMUL_SUM; with factor 1 it is the same)
            m.set_force_sum_reduction_for_comms(True)
    # Decide the two roots now (base, head), so that a first forward through a vision block
    # alone (the local engine's image features) cannot make that block a root of its own.
    for root in (base, head):
        root._get_fsdp_state()._lazy_init()
    return model


def _fsdp_roots(model: Any) -> list[Any]:
    cls = _fsdp_module_class()
    return [m for m in unwrap_model(model).modules() if isinstance(m, cls)]


@contextlib.contextmanager
def full_weights(model: Any) -> Iterator[Any]:
    """Every parameter of ``model`` whole on every rank inside the block (FSDP2: unshard, then reshard).

    A no-op for a model that is not sharded. Wrap code that reads weights directly rather
    than through module calls, e.g. the local engine, which packs the layers' weights into
    its own decode step::

        with full_weights(model):
            rollouts = engine.sample(model, processor, prompts, params)

    Every rank must enter it (the unshard is an all-gather). Under bf16 mixed precision the
    gathered weights are bf16 (the compute copy). Memory: the whole model per rank while inside.
    """
    units = _fsdp_roots(model)
    if not units:
        yield model
        return
    for u in units:
        u.unshard()
    try:
        yield model
    finally:
        for u in units:
            u.reshard()


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's state dict, on CPU, on rank 0 (``{}`` on other ranks when sharded).

    Sharded models are gathered (a collective: every rank must call it); an unsharded model
    returns its own ``state_dict()`` (every rank). Keys are those of the transformers model
    (``unwrap_model``), so ``save_pretrained(state_dict=...)`` writes the usual layout.
    """
    inner = unwrap_model(model)
    if not is_sharded(inner):
        return inner.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state of a sharded model, gathered on rank 0 (keys: parameter names)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        unwrap_model(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_optimizer_state(model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a gathered optimizer state (:func:`full_optimizer_state`) into a sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        unwrap_model(model),
        optimizer,
        optim_state_dict=state,
        options=StateDictOptions(full_state_dict=True),
    )


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole (a collective); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
