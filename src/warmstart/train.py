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

Process-count agnostic: under ``accelerate launch --num_processes N`` every process
holds the global batch and takes every N-th micro-batch of it; the loss of each
micro-batch is divided by the *global* denominator (valid tokens, or non-empty rows),
and the gradients are summed across processes (an all-reduce after accumulation,
rather than DDP's per-backward mean, so ranks with different micro-batch counts cannot
deadlock), so the update equals the single-process one up to float summation order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from warmstart import losses
from warmstart.atomic import atomic_dir, atomic_write_text
from warmstart.batch import TrainBatch
from warmstart.config import ConfigError, to_dict
from warmstart.losses import LossConfig

__all__ = [
    "LossConfig",
    "OptimConfig",
    "RunDir",
    "StepStats",
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
        dtype: parameter/compute dtype: ``float32`` or ``bfloat16``.
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

    Every process runs the stage loop on the same data and seeds (so rollouts agree);
    :meth:`Trainer.update` splits each global batch's micro-batches across processes
    and all-reduces the gradients; only rank 0 writes logs and checkpoints.
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
        skipped: the step was skipped (non-finite loss or gradient).
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
        accelerator: an ``accelerate.Accelerator`` for multi-process runs, or ``None``.
    """

    def __init__(self, model, optim: OptimConfig, loss: LossConfig, total_steps: int, accelerator=None):
        self.optim_cfg, self.loss_cfg, self.total_steps = optim, loss, total_steps
        self.accelerator = accelerator
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

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

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
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def _set_lr(self) -> float:
        mult = lr_at(self.step, self.total_steps, self.optim_cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = self.optim_cfg.lr * mult * g.get("lr_mult", 1.0)
        return self.optim_cfg.lr * mult

    def update(self, batch: TrainBatch, micro_batch: int = 16, with_entropy: bool = True) -> StepStats:
        """One optimizer step on all rows of ``batch`` (the global batch).

        Rows are split into micro-batches of ``micro_batch``; under N processes each
        takes every N-th one. Each micro-batch's loss is the objective
        ``loss.objective`` names, of the model's scores of its response tokens
        (with the full-vocabulary entropy when ``with_entropy`` or the entropy bonus
        asks for it). NaN/inf loss or gradient skips the step (``skipped=True``).
        """
        from warmstart.scoring import score_rollouts

        cfg = self.loss_cfg
        objective = losses.get("objectives", cfg.objective)
        mask_BT = batch.mask_BT
        B = batch.num_rows
        total_tokens = int(mask_BT.sum())  # global: every process holds the global batch
        denom = losses.aggregation_denom(cfg.agg, mask_BT)
        starts = list(range(0, B, micro_batch))[self.rank :: self.world_size]
        lr = self._set_lr()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # every process sums the same keys, with or without a micro-batch of its own
        sums = dict.fromkeys(("loss", "ent", *losses.OBJECTIVE_STATS), 0.0)
        bad = False
        for s in starts:
            mb = batch.select(list(range(s, min(B, s + micro_batch))))
            # entropy of the trained tokens is logged when asked for; the bonus needs it
            need_entropy = with_entropy or cfg.entropy_coef > 0
            scores = score_rollouts(self.model, mb.rollouts, with_entropy=need_entropy, grad=True)
            total, terms = objective(mb, scores, cfg, denom)
            unknown = sorted(set(terms) - set(losses.OBJECTIVE_STATS))
            if unknown:
                raise ValueError(
                    f"objective {cfg.objective!r} returned stats {unknown}; "
                    f"valid: {list(losses.OBJECTIVE_STATS)}"
                )
            if not torch.isfinite(total):
                bad = True
                break
            total.backward()
            sums["loss"] += float(total.detach())
            for k, v in terms.items():
                sums[k] += v
            if scores.entropy_BT is not None:
                sums["ent"] += float((scores.entropy_BT.detach() * mb.mask_BT).sum())
        grad_norm = float("nan")
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.world_size > 1:
            sums["bad"] = float(bad)
            sums = self._all_reduce_floats(sums)
            bad = sums.pop("bad") > 0
            self._all_reduce_grads(params)
        if not bad:
            if self.optim_cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip))
            else:
                grad_norm = float(
                    torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                )
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
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tok = max(1, total_tokens)
        return StepStats(
            loss=sums["loss"],
            pg_loss=sums["pg_loss"],
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
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.random.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.optimizer.load_state_dict(state["optimizer"])
        torch.random.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])


# ---- run directory -----------------------------------------------------------------------
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
        ckpts = sorted(
            p for p in (self.root / "checkpoints").glob("step_*") if (p / "trainer_state.pt").exists()
        )
        return ckpts[-1] if ckpts else None

    def save_checkpoint(
        self, trainer: Trainer, processor, extra: dict[str, Any] | None = None, keep_last: int = 2
    ) -> Path:
        """Model (HF format) + optimizer/RNG/step state, written atomically (temp dir, then rename)."""
        dest = self.checkpoint_dir(trainer.step)
        if not is_main_process():
            return dest
        save_model_atomic(
            trainer.unwrapped,
            processor,
            dest,
            extra_files={"trainer_state.pt": {**trainer.state_dict(), "extra": extra or {}}},
        )
        ckpts = sorted((self.root / "checkpoints").glob("step_*"))
        for old in ckpts[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return dest


def save_model_atomic(model, processor, dest: Path, extra_files: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` (model, processor, ``extra_files`` via ``torch.save``) into ``dest`` atomically."""
    from warmstart.models.load import quiet_transformers

    quiet_transformers()
    dest = Path(dest)
    if not is_main_process():
        return dest
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        for name, obj in (extra_files or {}).items():
            torch.save(obj, tmp / name)
    return dest


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def load_resume_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)


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
):
    """Load the policy (from ``init``, or from the run's last checkpoint with ``resume``) and its Trainer.

    Returns ``(policy, trainer, extra)`` where ``extra`` is the stage's own state saved
    with the checkpoint (best validation so far, ...), empty on a fresh start.
    """
    from warmstart.models import load_policy

    ckpt = run.latest_checkpoint() if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s; starting from %s", run.root, init)
    policy = load_policy(ckpt or init, dtype=optim.dtype, trainable=True)
    for p in policy.model.parameters():
        p.requires_grad_(True)
    trainer = Trainer(policy.model, optim, loss, total_steps, accelerator=accelerator or make_accelerator())
    extra: dict[str, Any] = {}
    if ckpt is not None:
        state = load_resume_state(ckpt)
        trainer.load_state_dict(state)
        extra = state.get("extra", {})
        log.info("resumed from %s at optimizer step %d", ckpt, trainer.step)
    # metric rows logged after the checkpoint are redone: drop them (stages log by their own step)
    run.truncate_metrics(extra.get("log_step", trainer.step) if ckpt is not None else -1)
    return policy, trainer, extra
