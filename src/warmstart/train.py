"""The shared training step, checkpoints and run directories.

Every stage (pretrain, SFT, OPD, GRPO) trains through :class:`Trainer`: a
:class:`~warmstart.batch.TrainBatch` (rows of prompt + response tokens with per-token
advantages and whichever log-probs the loss needs) comes in; one optimizer update
comes out. The loss is the :data:`warmstart.losses.OBJECTIVES` entry that
``LossConfig.objective`` names, computed micro-batch by micro-batch from the model's
scores of the response tokens. With the policy-gradient objective the stages differ
only in where the per-token weights come from:

* SFT / pretrain: advantage 1 on every response token, ``old_logp = logp`` (ratio 1):
  the policy-gradient loss is then exactly the token-mean negative log-likelihood.
* OPD: advantage = ``-(log pi_student - log pi_teacher)`` per token.
* GRPO: group-relative advantage of each row, spread over its tokens.

Process-count agnostic: under ``torchrun`` / ``accelerate launch`` with N processes every
process holds the global batch and takes every N-th micro-batch of it; the loss of each
micro-batch is divided by the *global* denominator (valid tokens, or non-empty rows),
and the gradients are summed across processes, so the update equals the single-process
one up to float summation order. How (``parallel.strategy``, :mod:`warmstart.distributed`):

* ``ddp``: full replicas; one all-reduce of the gradients after accumulation (rather than
  DDP's per-backward mean, so ranks with different micro-batch counts cannot deadlock).
* ``fsdp``: FSDP2 units reduce-scatter (sum) the gradients in every backward; every rank
  runs the same number of forward/backward passes (a rank short of a micro-batch runs one
  with its loss multiplied by 0), the optimizer updates each rank's shard of the fp32
  master weights.

Mixed precision: ``optim.dtype = "bfloat16"`` computes in bf16 and keeps fp32 master
weights and fp32 Adam state (pure bf16 weights at lr 1e-6 barely move).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from warmstart import distributed as dist_util
from warmstart import losses
from warmstart.atomic import atomic_dir, atomic_write_text
from warmstart.batch import TrainBatch
from warmstart.config import ConfigError, to_dict
from warmstart.distributed import ParallelConfig
from warmstart.losses import LossConfig

__all__ = [
    "LossConfig",
    "OptimConfig",
    "ParallelConfig",
    "RunDir",
    "EXPLODED_NORM_FACTOR",
    "StepStats",
    "TrainingDiverged",
    "Timer",
    "TrainBatch",
    "Trainer",
    "atomic_write_text",
    "lr_at",
    "make_accelerator",
    "open_training",
    "require_set",
    "save_model_atomic",
    "step_seed",
]

log = logging.getLogger(__name__)

# The explosion guard: after every optimizer step the global parameter norm must stay finite
# and below this multiple of its value when training started (the init's norm, kept in the
# trainer state so a resumed run uses the same reference). Adam moves each weight by about ``lr`` per step, so a valid run (lr
# 1e-3, a few thousand steps) grows the norm by a small factor; an absurd learning rate
# (1e30) multiplies it by ~1e30 in one step. Exceeding it aborts the stage before the blown
# weights reach any checkpoint, ``best/`` or ``final/``.
EXPLODED_NORM_FACTOR = 1e3

TRAINER_STATE = "trainer_state.pt"  # torch.save of tensors and plain containers only


class TrainingDiverged(RuntimeError):
    """A stage's training diverged (non-finite steps in a row, or exploded weights); nothing was saved."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule shared by every stage.

    Attributes:
        lr: peak learning rate (AdamW).
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warm-up steps from 0 to ``lr``.
        schedule: ``constant`` after warm-up, or ``cosine`` decay to ``min_lr_ratio * lr`` at the last step.
        min_lr_ratio: floor of the cosine schedule as a fraction of ``lr``.
        grad_clip: max global gradient norm (0 disables clipping).
        vision_lr_mult: learning-rate multiplier for the vision tower (BASELINES: 3x helps a
            tiny tower learn to read diagrams; 1.0 for pretrained models).
        dtype: compute dtype: ``float32``, or ``bfloat16`` = mixed precision: forward and
            backward in bf16, while the optimizer keeps fp32 master weights and fp32 Adam
            state (FSDP2 ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` under
            ``parallel.strategy = "fsdp"``, ``torch.autocast`` otherwise). Weights are never
            stored in bf16 for training: bf16 weights with Adam at lr 1e-6 changed 0.9% of the
            toy's weights over 3 steps against 93% in fp32 (issue 13).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    vision_lr_mult: float = 1.0
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")


def is_main_process() -> bool:
    """Rank 0 (or a plain single-process run): the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def make_accelerator():
    """An ``accelerate.Accelerator`` when launched with several processes, else ``None``.

    Kept for callers that want accelerate's process-group setup; :func:`open_training`
    joins the process group itself (:func:`warmstart.distributed.init_distributed`), with
    NCCL on GPUs and gloo on CPUs, under ``torchrun`` and ``accelerate launch`` alike.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator()


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A per-step seed, so a resumed run draws exactly what an uninterrupted one would."""
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**31 - 1)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier (of ``cfg.lr``) at 0-based optimizer step ``step``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total_steps <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _is_vision_param(name: str) -> bool:
    return ".visual." in f".{name}" or name.startswith("visual.") or ".visual." in name


@dataclass
class StepStats:
    """What one update reports (plain numbers, summed over the step's micro-batches and processes).

    Attributes:
        loss: the objective's loss (the number backpropagated).
        pg_loss: its policy-gradient term (0 for an objective without one).
        grad_norm: global gradient norm before clipping (NaN when the step was skipped).
        lr: learning rate of the step.
        clip_frac: fraction of valid tokens whose PPO clip was active.
        num_tokens: valid response tokens of the global batch.
        entropy: token mean of the full-vocabulary entropy of the trained tokens (0 when not scored).
        kl: the KL-to-reference term (0 when off).
        skipped: the step was skipped (non-finite loss or gradient); its ``loss`` and
            ``pg_loss`` are then NaN (stages log them as ``null`` with ``skipped: true``).
    """

    loss: float
    pg_loss: float
    grad_norm: float
    lr: float
    clip_frac: float
    num_tokens: int
    entropy: float
    kl: float = 0.0
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Trainer:
    """AdamW + schedule + the configured objective (``loss.objective``), with gradient accumulation.

    Args:
        model: the trainable model (``requires_grad`` on the parameters to train).
        optim: optimizer/schedule config.
        loss: loss config.
        total_steps: number of optimizer steps planned (for the schedule).
        accelerator: an ``accelerate.Accelerator`` for multi-process runs, or ``None``
            (the process group, when one is initialised, is used either way).
        stage: the stage's name (error messages).
        parallel: the strategy (``fsdp``: the model must already be sharded by
            :func:`warmstart.distributed.shard_model`, as :func:`open_training` does).
    """

    def __init__(
        self,
        model,
        optim: OptimConfig,
        loss: LossConfig,
        total_steps: int,
        accelerator=None,
        stage: str = "train",
        parallel: ParallelConfig | None = None,
    ):
        self.optim_cfg, self.loss_cfg, self.total_steps = optim, loss, total_steps
        self.stage = stage
        self.accelerator = accelerator
        self.parallel = parallel or ParallelConfig()
        self.sharded = dist_util.is_sharded(model)
        if self.parallel.strategy == "fsdp" and not self.sharded and self.world_size > 1:
            raise ValueError("strategy 'fsdp': shard the model first (warmstart.distributed.shard_model)")
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        groups = [
            {"params": [p for n, p in params if not _is_vision_param(n)], "lr_mult": 1.0},
            {"params": [p for n, p in params if _is_vision_param(n)], "lr_mult": optim.vision_lr_mult},
        ]
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(
            groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.model = model
        self.step = 0
        self.bad_steps_in_a_row = 0
        # reference of the explosion guard (kept in the trainer state, so a resumed run
        # compares against the same number as an uninterrupted one)
        self.ref_param_norm = self._param_norm()

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def _param_norm(self) -> float:
        # sharded parameters: the norm of the local shards, combined over ranks (a collective)
        norm = torch.nn.utils.get_total_norm([p.detach() for p in self._params()])
        return float(dist_util.full_tensor(norm))

    def _check_weights(self) -> None:
        """The explosion guard (see :data:`EXPLODED_NORM_FACTOR`), after an optimizer step."""
        norm = self._param_norm()
        limit = EXPLODED_NORM_FACTOR * max(self.ref_param_norm, 1.0)
        if math.isfinite(norm) and norm <= limit:
            return
        raise TrainingDiverged(
            f"{self.stage}: weights exploded at optimizer step {self.step + 1}: global parameter norm "
            f"{norm:.3g} vs {self.ref_param_norm:.3g} at the start (limit {EXPLODED_NORM_FACTOR:g}x); "
            f"the learning rate is most likely far too high (optim.lr = {self.optim_cfg.lr:g}). "
            "Aborted; these weights were not saved (the last checkpoint, if any, predates them)."
        )

    def abort_if_diverging(self, max_bad_steps: int, at_step: int | None = None) -> None:
        """Raise :class:`TrainingDiverged` after ``max_bad_steps`` skipped (non-finite) updates in a row."""
        if max_bad_steps > 0 and self.bad_steps_in_a_row >= max_bad_steps:
            where = self.step if at_step is None else at_step
            raise TrainingDiverged(
                f"{self.stage}: {self.bad_steps_in_a_row} non-finite updates in a row (NaN/inf loss or "
                f"gradient) at step {where} (max_bad_steps = {max_bad_steps}); aborting. Likely causes: "
                f"a learning rate too high (optim.lr = {self.optim_cfg.lr:g}), non-finite weights in "
                "the init model, or a bad teacher/reward signal."
            )

    @property
    def world_size(self) -> int:
        if self.accelerator is not None:
            return self.accelerator.num_processes
        return dist_util.world_size() if torch.distributed.is_initialized() else 1

    @property
    def rank(self) -> int:
        if self.accelerator is not None:
            return self.accelerator.process_index
        return dist_util.rank() if torch.distributed.is_initialized() else 0

    @property
    def unwrapped(self):
        return self.model

    def _all_reduce_grads(self, params: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def _all_reduce_floats(self, values: dict[str, float]) -> dict[str, float]:
        # on the process group's device: NCCL reduces CUDA tensors only, gloo CPU ones
        keys = sorted(values)
        t = dist_util.all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64))
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def _set_lr(self) -> float:
        mult = lr_at(self.step, self.total_steps, self.optim_cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = self.optim_cfg.lr * mult * g.get("lr_mult", 1.0)
        return self.optim_cfg.lr * mult

    def update(
        self, batch: TrainBatch, micro_batch: int = 16, with_entropy: bool = True, loss_fn=None
    ) -> StepStats:
        """One optimizer step on all rows of ``batch`` (the global batch).

        Rows are split into micro-batches of ``micro_batch``; under N processes each
        takes every N-th one. Each micro-batch's loss is the objective
        ``loss.objective`` names, of the model's scores of its response tokens
        (with the full-vocabulary entropy when ``with_entropy`` or the entropy bonus
        asks for it); rows that share a prompt run it once
        (:func:`warmstart.prompt_sharing.score_rollouts_shared_prompts`, equal values and
        gradients to float rounding; not under FSDP). NaN/inf loss or gradient skips the step (``skipped=True``, loss NaN).
        After the step the global parameter norm is checked: non-finite or above
        :data:`EXPLODED_NORM_FACTOR` x its starting value raises :class:`TrainingDiverged`
        (there is no copy to restore, and those weights must never be saved).

        ``loss_fn(model, mb, denom) -> (loss, stats)``, when given, computes each micro-batch's
        loss in place of the scoring forward + ``loss.objective`` (a loss that needs more than
        the sampled tokens' scores: OPD's dense estimators, :mod:`warmstart.stages.opd`); its
        stats are an objective's (keys of ``OBJECTIVE_STATS``); no entropy is logged then.
        Everything else (micro-batches, denominators, processes, skipping, clipping) is the same.
        """
        from warmstart.prompt_sharing import score_rows

        cfg = self.loss_cfg
        objective = losses.get("objectives", cfg.objective)
        mask_BT = batch.mask_BT
        B = batch.num_rows
        total_tokens = int(mask_BT.sum())  # global: every process holds the global batch
        denom = losses.aggregation_denom(cfg.agg, mask_BT)
        all_starts = list(range(0, B, micro_batch))
        starts = all_starts[self.rank :: self.world_size]
        # FSDP: every backward is a collective, so every rank runs the same number of passes;
        # a rank short of a micro-batch runs one with its loss times 0 (no gradient, no stats).
        n_passes = -(-len(all_starts) // self.world_size) if self.sharded else len(starts)
        lr = self._set_lr()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # every process sums the same keys, with or without a micro-batch of its own
        sums = dict.fromkeys(("loss", "ent", *losses.OBJECTIVE_STATS), 0.0)
        bad = False
        # entropy of the trained tokens is logged when asked for; the bonus needs it
        need_entropy = with_entropy or cfg.entropy_coef > 0
        for i in range(n_passes):
            real = i < len(starts)
            s = starts[i] if real else all_starts[0]
            mb = batch.select(list(range(s, min(B, s + micro_batch))))
            # rows that share a prompt (GRPO's n samples) run that prompt once; not under
            # FSDP, where the LM head must run inside the head module's own forward
            if loss_fn is None:
                scores = score_rows(
                    self.model, mb.rollouts, share=not self.sharded, with_entropy=need_entropy, grad=True
                )
                total, terms = objective(mb, scores, cfg, denom)
            else:
                scores = None
                total, terms = loss_fn(self.model, mb, denom)
            unknown = sorted(set(terms) - set(losses.OBJECTIVE_STATS))
            if unknown:
                raise ValueError(
                    f"objective {cfg.objective if loss_fn is None else loss_fn!r} returned stats {unknown}; "
                    f"valid: {list(losses.OBJECTIVE_STATS)}"
                )
            if not real:
                (total * 0.0).backward()
                continue
            if not torch.isfinite(total):
                bad = True
                if not self.sharded:
                    break
                # sharded: the other ranks wait in this pass's collectives; take part, then skip
                (total.nan_to_num(0.0) * 0.0).backward()
                continue
            total.backward()
            sums["loss"] += float(total.detach())
            for k, v in terms.items():
                sums[k] += v
            if scores is not None and scores.entropy_BT is not None:
                sums["ent"] += float((scores.entropy_BT.detach() * mb.mask_BT).sum())
        grad_norm = float("nan")
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.world_size > 1:
            sums["bad"] = float(bad)
            sums = self._all_reduce_floats(sums)
            bad = sums.pop("bad") > 0
            if not self.sharded:  # FSDP already reduce-scattered (summed) them in backward
                self._all_reduce_grads(params)
        if not bad:
            # (sharded gradients: DTensor norms, combined over ranks by full_tensor)
            if self.optim_cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            grad_norm = float(dist_util.full_tensor(norm))
            bad = not math.isfinite(grad_norm)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps_in_a_row += 1
            log.warning(
                "step %d: non-finite loss or gradient; update skipped (%d in a row)",
                self.step,
                self.bad_steps_in_a_row,
            )
        else:
            self.optimizer.step()
            self.bad_steps_in_a_row = 0
            self._check_weights()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tok = max(1, total_tokens)
        nan = float("nan")
        return StepStats(
            loss=nan if bad else sums["loss"],
            pg_loss=nan if bad else sums["pg_loss"],
            grad_norm=grad_norm,
            lr=lr,
            clip_frac=sums["clipped_tokens"] / tok,
            num_tokens=total_tokens,
            entropy=sums["ent"] / tok,
            kl=sums["kl"],
            skipped=bad,
        )

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only (loadable with ``torch.load(weights_only=True)``).

        Sharded (FSDP): the optimizer state is gathered whole on rank 0, keyed by parameter
        name (a collective: every rank calls this); other ranks get it empty. LoRA: the
        adapters' weights are kept too (``lora``), since the checkpoint's weights are merged.
        """
        name, keys, pos, has_gauss, cached = np.random.get_state()
        if self.sharded:
            optim_state = dist_util.full_optimizer_state(self.model, self.optimizer)
        else:
            optim_state = self.optimizer.state_dict()
        from warmstart.models.load import lora_state_dict

        lora = lora_state_dict(self.model)
        return {
            "step": self.step,
            "bad_steps_in_a_row": self.bad_steps_in_a_row,
            "ref_param_norm": self.ref_param_norm,
            "optimizer": optim_state,
            "sharded_optimizer": self.sharded,
            **({"lora": lora} if lora is not None else {}),
            "torch_rng": torch.random.get_rng_state(),
            "numpy_rng": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
            "python_rng": _plain(random.getstate()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.bad_steps_in_a_row = state.get("bad_steps_in_a_row", 0)
        self.ref_param_norm = state.get("ref_param_norm", self.ref_param_norm)
        if state.get("sharded_optimizer", False) != self.sharded:
            raise ConfigError(
                f"{self.stage}: this checkpoint's optimizer state was written by a "
                f"{'sharded' if state.get('sharded_optimizer') else 'non-sharded'} run; resume it "
                "with the same parallel.strategy"
            )
        if self.sharded:
            dist_util.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        torch.random.set_rng_state(state["torch_rng"])
        name, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))


# ---- run directory -----------------------------------------------------------------------
_CKPT_NAME = re.compile(r"step_\d{6,}")


@dataclass
class RunDir:
    """A stage's output folder: config snapshot, metrics.jsonl, TensorBoard events, checkpoints.

    Layout::

        <root>/config.json  metrics.jsonl  tb/  checkpoints/step_000040/  final/  result.json
    """

    root: Path
    stage: str
    tensorboard: bool = True
    _tb: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "checkpoints").mkdir(exist_ok=True)

    def write_config(self, cfg: Any) -> None:
        if not is_main_process():
            return
        atomic_write_text(self.root / "config.json", json.dumps(to_dict(cfg), indent=2, sort_keys=True))

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def log(self, step: int, **values: Any) -> None:
        if not is_main_process():
            return
        row = {"step": step, "stage": self.stage, **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.root / "tb"))
            for k, v in row.items():
                if (
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and k != "step"
                    and math.isfinite(v)
                ):
                    self._tb.add_scalar(f"{self.stage}/{k}", v, step)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric rows logged after ``after_step`` (work lost by a crash is redone on resume)."""
        if not is_main_process() or not self.metrics_path.exists():
            return
        keep = [
            ln
            for ln in self.metrics_path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["step"] <= after_step
        ]
        atomic_write_text(self.metrics_path, "".join(ln + "\n" for ln in keep))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(ln) for ln in self.metrics_path.read_text().splitlines() if ln.strip()]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def save_model(self, policy, name: str) -> Path:
        """The policy's model and processor, HF format, into ``<root>/<name>`` (atomically; rank 0)."""
        return save_model_atomic(policy.model, policy.processor, self.root / name)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Write the stage's ``result.json`` (rank 0), close the logs, and hand ``result`` back."""
        if is_main_process():
            atomic_write_text(self.root / "result.json", json.dumps(result, indent=2))
        self.close()
        return result

    # checkpoints
    def checkpoint_dir(self, step: int) -> Path:
        return self.root / "checkpoints" / f"step_{step:06d}"

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: ``step_NNNNNN`` with its trainer state and weights.

        Checkpoints are written into a hidden temp folder that is renamed into place, so a
        ``step_*`` folder is complete; temp/deleted folders (``.step_*``) and anything
        lacking its files (e.g. written by an older version) are ignored.
        """
        ckpts = sorted(
            p
            for p in (self.root / "checkpoints").glob("step_*")
            if _CKPT_NAME.fullmatch(p.name)
            and (p / TRAINER_STATE).is_file()
            and (p / "config.json").is_file()
            and any(p.glob("model*.safetensors"))
        )
        return ckpts[-1] if ckpts else None

    def save_checkpoint(
        self, trainer: Trainer, processor, extra: dict[str, Any] | None = None, keep_last: int = 2
    ) -> Path:
        """Model (HF format) + optimizer/RNG/step state, written atomically (temp dir, then rename)."""
        dest = self.checkpoint_dir(trainer.step)
        state = trainer.state_dict()  # every rank: gathers a sharded optimizer state
        save_model_atomic(
            trainer.unwrapped,
            processor,
            dest,
            extra_files={TRAINER_STATE: {**state, "extra": extra or {}}},
        )
        if not is_main_process():
            return dest
        ckpts = sorted(p for p in (self.root / "checkpoints").glob("step_*") if _CKPT_NAME.fullmatch(p.name))
        for old in ckpts[:-keep_last]:
            # rename first, so a kill mid-delete never leaves a half-deleted step_* folder
            doomed = old.with_name(f".{old.name}.del-{os.getpid()}")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        return dest


def save_model_atomic(model, processor, dest: Path, extra_files: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` (model, processor, ``extra_files`` via ``torch.save``) into ``dest`` atomically.

    Every process calls it: a sharded (FSDP) model is gathered whole onto rank 0 first, and
    rank 0 writes the plain transformers layout (a LoRA model: its merged weights), so the
    folder loads with ``from_pretrained`` as it is. The others wait until it is written.
    """
    from warmstart.models.load import merged_state_dict, quiet_transformers, unwrap_model

    quiet_transformers()
    dest = Path(dest)
    inner = unwrap_model(model)
    if dist_util.is_sharded(inner):
        state = dist_util.full_state_dict(inner)  # collective
    else:
        state = merged_state_dict(model)  # None without LoRA: the model's own state dict
    if is_main_process():
        with atomic_dir(dest) as tmp:
            inner.save_pretrained(tmp, **({"state_dict": state} if state is not None else {}))
            if processor is not None:
                processor.save_pretrained(tmp)
            for name, obj in (extra_files or {}).items():
                torch.save(obj, tmp / name)
    dist_util.barrier()
    return dest


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _plain(v: Any) -> Any:
    """Tuples to lists, recursively (plain containers for the trainer state)."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def load_resume_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, never unpickling code (``torch.load(weights_only=True)``).

    A resumed run directory may come from someone else: only tensors and plain containers
    load; anything else (e.g. a pickle that would run code) is refused with a ConfigError.
    """
    import pickle

    path = ckpt / TRAINER_STATE
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{path}: refusing to load this trainer state: it holds objects other than tensors and "
            f"plain containers ({first[:300]}). It was not written by this version of warmstart, or was "
            "tampered with; delete the checkpoint to restart from the previous one."
        ) from None


class Timer:
    """Wall-clock sections of a step (rollout / scoring / update), in seconds."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Section:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.t[name] = timer.t.get(name, 0.0) + time.perf_counter() - self.t0

        return _Section()


def require_set(cfg: Any, stage: str, *names: str) -> None:
    """Raise a ConfigError naming the fields of ``cfg`` among ``names`` that are empty.

    Stage configs default ``init``/``data``/``teacher`` to "" so a study can parse a
    stage table without them; a stage checks them here when it starts.
    """
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise ConfigError(f"{stage}: {', '.join(missing)} must be set (empty in its config)")


def open_training(
    run: RunDir,
    init: str,
    resume: bool,
    optim: OptimConfig,
    loss: LossConfig,
    total_steps: int,
    accelerator=None,
    parallel: ParallelConfig | None = None,
):
    """Load the policy (from ``init``, or from the run's last checkpoint with ``resume``) and its Trainer.

    ``parallel`` places it (``device``; under a launch of several processes, each rank's
    GPU), joins the process group, and applies the strategy: LoRA adapters, activation
    checkpointing, FSDP2 sharding, and the compute dtype (``optim.dtype``; the weights are
    loaded in fp32, the master copy).

    Returns ``(policy, trainer, extra)`` where ``extra`` is the stage's own state saved
    with the checkpoint (best validation so far, ...), empty on a fresh start.
    """
    from warmstart.models import load_policy
    from warmstart.models.load import DTYPES, load_lora_state_dict

    parallel = parallel or ParallelConfig()
    parallel.validate()
    dist_util.check_launch_env(parallel, optim.dtype)
    device = dist_util.resolve_device(parallel.device)
    dist_util.init_distributed(device)
    ckpt = run.latest_checkpoint() if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s; starting from %s", run.root, init)
    state = load_resume_state(ckpt) if ckpt is not None else None
    # LoRA resumes from init plus the saved adapters (the checkpoint's weights are merged).
    source = init if parallel.lora is not None else (ckpt or init)
    policy = load_policy(source, dtype="float32", device=str(device), lora=parallel.lora, trainable=True)
    if parallel.lora is None:
        for p in policy.model.parameters():
            p.requires_grad_(True)
    elif state is not None and "lora" in state:
        load_lora_state_dict(policy.model, state["lora"])
    if parallel.activation_checkpointing:
        from warmstart.models.load import unwrap_model

        inner = unwrap_model(policy.model)
        # non-reentrant: works with frozen inputs (LoRA) and with FSDP2's hooks in recompute
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bf16 = optim.dtype == "bfloat16"
    # FSDP on one process would shard nothing (and needs a process group): plain training then
    if parallel.strategy == "fsdp" and dist_util.world_size() > 1:
        dist_util.shard_model(policy.model, parallel, bf16=bf16)
    elif bf16:
        dist_util.set_compute_dtype(policy.model, DTYPES[optim.dtype])
    trainer = Trainer(
        policy.model,
        optim,
        loss,
        total_steps,
        accelerator=accelerator,
        stage=run.stage,
        parallel=parallel,
    )
    extra: dict[str, Any] = {}
    if state is not None:
        trainer.load_state_dict(state)
        extra = state.get("extra", {})
        log.info("resumed from %s at optimizer step %d", ckpt, trainer.step)
    # metric rows logged after the checkpoint are redone: drop them (stages log by their own step)
    run.truncate_metrics(extra.get("log_step", trainer.step) if ckpt is not None else -1)
    return policy, trainer, extra
