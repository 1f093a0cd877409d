"""Stage-1 SFT: supervised fine-tuning on worked solutions, early-stopped or over-trained.

One recipe, two arms (``arm``):

* ``early``: validate every ``eval_every`` steps (greedy accuracy, then loss), keep the
  best checkpoint in ``best/``, stop after ``patience`` validations without improvement.
* ``over``: the same run, but when early stopping would trigger it keeps going until
  ``over_multiple x best_step`` and keeps the final weights in ``final/``. Because the
  run is deterministic, its ``best/`` is exactly the early arm's checkpoint, so one
  ``over`` run yields both arms (the study uses this).

The rule is :mod:`warmstart.stages.selection`'s, the same OPD uses; with
``matched_target`` set, the first validation reaching it is kept in ``matched/`` (the
matched-outcome checkpoint). The result's ``compute`` counts the sequences, tokens and
seconds of the training steps (from the run's own log, so a resumed run counts once).

The loss is the token-mean NLL of response tokens only (prompt tokens carry no loss),
computed through the shared policy-gradient path with advantage 1 (``vanilla_pg``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import torch

from warmstart.config import ConfigError
from warmstart.distributed import ParallelConfig
from warmstart.sampler import RolloutConfig, make_sampler
from warmstart.stages.common import (
    add_config_arguments,
    batch_indices,
    config_from_args,
    greedy_accuracy,
    load_frozen,
    load_split,
    progress,
    run_compute,
    sampled_entropy,
    teacher_forced,
    teacher_forced_nll,
)
from warmstart.stages.selection import Selection, observe, selection_summary
from warmstart.thread_share import follow_share
from warmstart.train import (
    LossConfig,
    OptimConfig,
    RunDir,
    TrainBatch,
    open_training,
    require_set,
)

if TYPE_CHECKING:
    from warmstart.sampler import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig:
    """Stage-1 SFT.

    Attributes:
        init: model to start from (checkpoint directory or hub id); must be set when the stage runs.
        data: problem data (path understood by ``load_problems``); must be set when the stage runs.
        out_dir: run directory.
        arm: ``early`` (stop at the best validation) or ``over`` (run to ``over_multiple`` x the best step).
        train_split: split with the training problems.
        train_problems: train on the first N problems of ``train_split`` (after ``families``;
            0 = all): a finite SFT set that many epochs over-train (the study's Stage-1 arms).
        families: train only on problems whose ``meta["family"]`` is listed (empty: all).
            Stage 0 uses it to give the toy student a curriculum that leaves skills for
            Stage-1 to teach.
        val_split: held-out split for validation.
        val_problems: number of validation problems used (first N; 0 = all).
        solutions: ``reference`` (the data set's rationales) or ``teacher`` (rationales sampled
            from ``teacher``, kept when they grade correct).
        teacher: teacher checkpoint (or ``http://`` URL of an OpenAI-compatible server) for
            ``solutions = "teacher"``, where it must be set.
        teacher_samples: samples per problem drawn from the teacher.
        teacher_temperature: sampling temperature for teacher rationales.
        teacher_timeout_s: seconds an HTTP teacher may take to answer one request before it
            counts as failed (a hung teacher then costs at most
            ``teacher_timeout_s x (1 + teacher_retries)`` per request, plus short backoffs).
        teacher_retries: retries after the first attempt of an HTTP teacher request, on
            connection errors, timeouts and 5xx (never on 4xx).
        max_steps: hard cap on optimizer steps (the early arm usually stops before).
        batch_size: problems per optimizer step (global batch).
        micro_batch: rows per forward/backward (gradient accumulation).
        eval_every: validate every N steps.
        patience: validations without improvement before early stopping.
        min_delta: improvement in validation accuracy that counts.
        over_multiple: the over-trained arm runs to this multiple of the best step.
        matched_target: selection accuracy whose first validation at or above it is kept in
            ``matched/`` (the matched-outcome checkpoint); ``None``: none kept. The study sets it
            from stage 0 (``[stage0] matched_fraction``).
        max_new_tokens: generation length for greedy validation.
        checkpoint_every: save a resumable checkpoint every N steps.
        max_bad_steps: abort (``TrainingDiverged``) after this many skipped updates in a row
            (non-finite loss or gradient; each is logged with ``skipped: true`` and ``loss: null``).
            Exploded weights (parameter norm above ``train.EXPLODED_NORM_FACTOR`` x its start)
            abort at once. 0 never aborts on skipped updates.
        seed: seed of data order and sampling.
        optim: optimizer and schedule.
        rollout: the sampler of validation decoding and of in-process teacher rationales.
        parallel: device and sharding (``[parallel]``: device, strategy ddp/fsdp, activation
            checkpointing, LoRA; :class:`warmstart.distributed.ParallelConfig`); the study fills it from ``[run]``.
    """

    init: str = ""
    data: str = ""
    out_dir: str = "runs/sft"
    arm: Literal["early", "over"] = "early"
    train_split: str = "train"
    train_problems: int = 0
    families: tuple[str, ...] = ()
    val_split: str = "validation"
    val_problems: int = 0
    solutions: Literal["reference", "teacher"] = "reference"
    teacher: str | None = None
    teacher_samples: int = 4
    teacher_temperature: float = 1.0
    teacher_timeout_s: float = 60.0
    teacher_retries: int = 3
    max_steps: int = 1000
    batch_size: int = 32
    micro_batch: int = 32
    eval_every: int = 25
    patience: int = 3
    min_delta: float = 0.0
    over_multiple: float = 3.0
    matched_target: float | None = None
    max_new_tokens: int = 64
    checkpoint_every: int = 50
    max_bad_steps: int = 5
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        if self.over_multiple < 1:
            raise ConfigError("over_multiple must be >= 1")
        if not self.teacher_timeout_s > 0 or self.teacher_retries < 0:
            raise ConfigError("teacher_timeout_s must be > 0 and teacher_retries >= 0")
        if self.eval_every <= 0 or self.batch_size <= 0 or self.micro_batch <= 0:
            raise ConfigError("eval_every, batch_size and micro_batch must be > 0")
        if self.max_bad_steps < 0 or self.train_problems < 0:
            raise ConfigError("max_bad_steps and train_problems must be >= 0")


def teacher_solutions(cfg: SFTConfig, problems) -> tuple[list, list[str]]:
    """Sample ``teacher_samples`` rationales per problem from the teacher; keep the correct ones.

    The teacher is a checkpoint (sampled in-process) or the URL of an OpenAI-compatible
    server (vLLM) that generates them.
    """
    from warmstart.grading import grade

    samples: list[tuple] = []  # (problem, text, finished)
    if cfg.teacher.startswith(("http://", "https://")):
        from warmstart.teacher import HTTPScorer, http_generate

        texts = http_generate(
            HTTPScorer(cfg.teacher, timeout_s=cfg.teacher_timeout_s, max_retries=cfg.teacher_retries),
            list(problems),
            cfg.teacher_samples,
            cfg.teacher_temperature,
            cfg.max_new_tokens,
            seed=cfg.seed,
        )
        samples = [(p, t, True) for p, ts in zip(problems, texts) for t in ts]
    else:
        from warmstart.rollout import SamplingParams

        teacher = load_frozen(cfg.teacher, cfg.parallel)
        sampler = make_sampler(cfg.rollout, teacher.model, teacher.processor)
        for s in range(0, len(problems), 64):
            chunk = problems[s : s + 64]
            params = SamplingParams(
                n=cfg.teacher_samples,
                temperature=cfg.teacher_temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed + s,
            )
            ro = sampler.sample(chunk, params)
            samples += [
                (chunk[int(q)], t, r == "stop")
                for t, q, r in zip(ro.texts_B, ro.prompt_index_B, ro.finish_reason_B)
            ]
    kept = [(p, t) for p, t, finished in samples if finished and grade(t, p).correct]
    log.info("teacher rationales: kept %d of %d samples", len(kept), len(samples))
    if not kept:
        raise RuntimeError("the teacher produced no correct rationale; cannot run SFT on teacher solutions")
    return [p for p, _ in kept], [t for _, t in kept]


def train_sft(
    cfg: SFTConfig,
    resume: bool = False,
    show_progress: bool = True,
    stage: str = "sft",
    stop_rule: Callable[[Sampler, int], dict] | None = None,
) -> dict:
    """Run SFT; returns the result dict also written to ``<out_dir>/result.json``.

    ``stop_rule(sampler, step)`` (stage 0's stop on the student alone) is asked at every
    validation; it returns a dict logged under ``stop_rule`` in the metrics row, whose
    ``stop`` True ends the run at that step (the last such dict is the result's ``stop_rule``).
    """
    require_set(cfg, stage, "init", "data")
    if cfg.solutions == "teacher" and not cfg.teacher:
        raise ConfigError(f"{stage}: solutions = 'teacher' needs a teacher checkpoint (teacher is not set)")
    torch.manual_seed(cfg.seed)
    run = RunDir(cfg.out_dir, stage)
    run.write_config(cfg)
    train = load_split(cfg.data, cfg.train_split)
    if cfg.families:
        train = [p for p in train if p.meta.get("family") in cfg.families]
        if not train:
            raise ConfigError(
                f"no {cfg.train_split!r} problem of families {list(cfg.families)} in {cfg.data}"
            )
    if cfg.train_problems:
        train = train[: cfg.train_problems]
    val = load_split(cfg.data, cfg.val_split, cfg.val_problems or None)
    if cfg.solutions == "teacher":
        items_p, items_t = teacher_solutions(cfg, train)
    else:
        items_p = [p for p in train if p.rationale]
        items_t = [p.rationale for p in items_p]
        if not items_p:
            raise ConfigError(f"{cfg.data} split {cfg.train_split!r} has no reference rationales")
    policy, trainer, extra = open_training(
        run,
        cfg.init,
        resume,
        cfg.optim,
        LossConfig(policy_loss="vanilla_pg"),
        cfg.max_steps,
        parallel=cfg.parallel,
    )
    sel = (
        Selection.from_dict(extra["selection"]) if "selection" in extra else Selection(stop_at=cfg.max_steps)
    )
    stopped = extra.get("stopped")  # the stop rule's last answer
    sampler = make_sampler(cfg.rollout, policy.model, policy.processor)

    def validate(step: int) -> dict:
        """Validate at ``step``: log fields, and save best/ and matched/ as the rule decides."""
        nonlocal sel, stopped
        acc = greedy_accuracy(sampler, val, cfg.max_new_tokens)
        nll = teacher_forced_nll(policy.model, policy.processor, val)
        # policy entropy of T=1 samples on the validation prompts (the trajectory the study plots)
        ent = sampled_entropy(sampler, val, cfg.max_new_tokens, seed=cfg.seed)
        d = observe(
            sel,
            step,
            acc,
            nll,
            arm=cfg.arm,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
            over_multiple=cfg.over_multiple,
            max_steps=cfg.max_steps,
            matched_target=cfg.matched_target,
        )
        sel = d.selection
        if d.save_best:
            run.save_model(policy, "best")
        if d.save_matched:
            run.save_model(policy, "matched")
        fields = {"val_accuracy": acc, "val_loss": nll, "entropy": ent}
        if stop_rule is not None:
            stopped = stop_rule(sampler, step)
            fields["stop_rule"] = stopped
            if stopped.get("stop"):
                sel = replace(sel, stop_at=step)
        return fields

    if trainer.step == 0:  # validation of the init, so "best" can be the starting point
        run.log(0, **validate(0))
    with progress(f"{stage}[{cfg.arm}]", sel.stop_at, trainer.step, show_progress) as bar:
        while trainer.step < sel.stop_at:
            follow_share()  # the study scheduler's thread share (no-op outside a study)
            t0 = time.perf_counter()  # step_time_s: this step's batch + update, never a validation
            idx = batch_indices(len(items_p), cfg.batch_size, trainer.step, cfg.seed)
            tf = teacher_forced([items_p[i] for i in idx], [items_t[i] for i in idx], policy.processor)
            st = trainer.update(TrainBatch.supervised(tf), micro_batch=cfg.micro_batch, with_entropy=False)
            sampler.sync_weights(policy.model)
            row = {
                "loss": None if st.skipped else st.pg_loss,
                **({"skipped": True} if st.skipped else {}),
                "lr": st.lr,
                "grad_norm": st.grad_norm,
                "tokens": st.num_tokens,
                "sequences": len(idx),
                "step_time_s": time.perf_counter() - t0,
            }
            if trainer.step % cfg.eval_every == 0 or trainer.step == sel.stop_at:
                before = sel.stop_at
                row.update(validate(trainer.step))
                if sel.stop_at != before:
                    bar(0, total=sel.stop_at)
            run.log(trainer.step, **row)
            bar(1, loss=st.pg_loss, **({"val_acc": row["val_accuracy"]} if "val_accuracy" in row else {}))
            trainer.abort_if_diverging(cfg.max_bad_steps)
            if trainer.step % cfg.checkpoint_every == 0 and trainer.step < sel.stop_at:
                run.save_checkpoint(
                    trainer,
                    policy.processor,
                    extra={"selection": sel.to_dict(), "stopped": stopped},
                )
    if cfg.arm == "over":
        run.save_model(policy, "final")
    result = {
        "arm": cfg.arm,
        "best_step": sel.best_step,
        "best_val_accuracy": sel.best_acc,
        "best_val_loss": sel.best_loss,
        "steps": trainer.step,
        "over_multiple": cfg.over_multiple,
        "model": str(run.root / ("final" if cfg.arm == "over" else "best")),
        "early_model": str(run.root / "best"),
        "n_train_items": len(items_p),
        "val_split": cfg.val_split,
        "val_problems": len(val),
        "selection": selection_summary(sel, cfg, trainer.step),
        "compute": run_compute(run.root / "metrics.jsonl"),
        **({"stop_rule": stopped} if stop_rule is not None else {}),
    }
    return run.finish(result)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--arm", choices=["early", "over"], default=None, help="override the config's arm")


def run(args: argparse.Namespace) -> int:
    from warmstart.config import from_dict, to_dict

    cfg = config_from_args(SFTConfig, args)
    if args.arm:
        cfg = from_dict(SFTConfig, {**to_dict(cfg), "arm": args.arm})
    res = train_sft(cfg, resume=args.resume, show_progress=not args.quiet)
    print(json.dumps(res, indent=2))
    return 0
