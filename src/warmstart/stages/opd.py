"""Stage-1 OPD: on-policy distillation from a larger teacher.

Each step the student samples responses to training prompts; the teacher (in-process
or over HTTP) scores every sampled token; the per-token reverse KL
``log pi_student(y_t) - log pi_teacher(y_t)`` is the negative per-token advantage of
the same policy-gradient loss GRPO uses (tinker-cookbook's formulation). With one
update per batch the importance ratio is 1; with more, the PPO clip applies.

No forward pass is spent on the student outside the update: with one update per batch
the advantage is computed inside the update from its own forward's log-probs
(``TrainBatch.distillation``), the same chunked scoring code the teacher is scored with,
so a teacher identical to the student gives an advantage of exactly zero; the logged
reverse KL, entropy and -log p are the sampler's exact per-token values (temperature 1,
in-process engine). Otherwise (another backend, a temperature other than 1, several
epochs without exact sampler log-probs) the student is scored once, as before.

What the student is taught is ``estimator`` (:data:`warmstart.losses.OPD_ESTIMATORS`,
docs/OPD_ESTIMATORS.md): ``sampled_rkl`` (the default, above) or a dense loss on both full
distributions (``full_rkl``, ``topk_fkl``, ``topk_rkl``; in-process teachers), computed in the
update micro-batch by micro-batch (:class:`DenseDistillation`, ``Trainer.update``'s
``loss_fn``). ``reward_coef`` adds the GRPO-normalised verifiable reward to the advantage;
``extra_teachers`` make the teacher the mixture of several.

Checkpoints: with ``eval_every`` > 0 the run is selected by the rule SFT uses
(:mod:`warmstart.stages.selection`): greedy accuracy on ``val_split`` every
``eval_every`` steps, ``best/`` (the early arm), an ``over`` run going on to
``over_multiple x best_step`` (``final/``), ``matched/`` at the first validation that
reaches ``matched_target``; ``steps`` is then the most it may take. With
``eval_every = 0`` it trains ``steps`` steps and keeps ``final/`` only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from warmstart import losses
from warmstart.batch import sampler_logp_is_exact
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
    teacher_forced_nll,
)
from warmstart.stages.selection import Selection, observe, selection_summary
from warmstart.thread_share import follow_share
from warmstart.train import (
    LossConfig,
    OptimConfig,
    RunDir,
    Timer,
    TrainBatch,
    open_training,
    require_set,
    step_seed,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OPDConfig:
    """Stage-1 on-policy distillation.

    Attributes:
        init: student checkpoint to start from; must be set when the stage runs.
        teacher: teacher checkpoint directory, or an ``http://`` URL of an OpenAI-compatible
            server with ``prompt_logprobs`` (vLLM, or ``warmstart serve``); must be set when the stage runs.
        teacher_model: model name sent to a remote teacher (``None``: the server's only model).
        teacher_protocol: how an HTTP teacher is asked: ``chat`` (OpenAI chat completions with
            ``prompt_logprobs``: ``vllm serve`` or ``warmstart serve``; text, re-tokenised by the
            server, a row whose tokens do not line up aborts) or ``tokens`` (the student's exact
            token ids and images to ``warmstart serve --engine vllm``; nothing re-tokenised).
        teacher_timeout_s: seconds an HTTP teacher may take to answer one request before it
            counts as failed (a hung teacher then costs at most
            ``teacher_timeout_s x (1 + teacher_retries)`` per request, plus short backoffs).
        teacher_retries: retries after the first attempt of an HTTP teacher request, on
            connection errors, timeouts and 5xx (never on 4xx).
        estimator: what the student is taught from the teacher, a key of
            :data:`warmstart.losses.OPD_ESTIMATORS` (docs/OPD_ESTIMATORS.md): ``sampled_rkl``
            (default: the per-token reverse KL of the sampled tokens as the policy-gradient
            advantage; any teacher), or a dense loss on both full distributions, which needs
            an in-process teacher: ``full_rkl`` (exact reverse KL over the vocabulary),
            ``topk_fkl`` (forward KL on the teacher's ``topk`` tokens + the rest),
            ``topk_rkl`` (reverse KL on the student's ``topk`` tokens + the rest).
        topk: k of the top-k estimators (``topk_fkl``, ``topk_rkl``), >= 1; 0 (unset) for the others.
        reward_coef: weight of the verifiable reward (the grader's correctness, 0/1) added to
            the distillation signal: advantage += ``reward_coef`` x the GRPO group-normalised
            reward of the row (:func:`warmstart.losses.opd_reward_advantage`; the ``n`` samples
            of a prompt are its group); 0: off (pure distillation).
        extra_teachers: more teacher checkpoint directories: the teacher is then the
            equal-weight mixture of ``teacher`` and these (:func:`warmstart.losses.mixture_logp`,
            token log-probs or full distributions); in-process teachers only.
        data: problem data (path understood by ``load_problems``); must be set when the stage runs.
        out_dir: run directory.
        train_split: split with the training prompts.
        train_problems: use the first N prompts of ``train_split`` (0 = all); the study gives
            OPD the same finite set as SFT.
        val_split: selection split of the periodic greedy validation (never the reported one).
        val_problems: number of validation problems (first N; 0 = all).
        steps: rollout steps (with ``eval_every`` > 0: the most the run may take).
        prompts_per_step: prompts per step.
        n: student samples per prompt.
        temperature: student sampling temperature.
        max_new_tokens: max response tokens.
        update_epochs: passes over each batch (> 1 uses the clipped importance ratio).
        micro_batch: rows per forward/backward.
        eval_every: validate every N steps (greedy accuracy, then the NLL of the reference
            rationales) and select checkpoints by the shared rule; 0: no validation, ``final/`` only.
        arm: ``early`` (stop at the best validation) or ``over`` (go on to ``over_multiple`` x
            the best step), when ``eval_every`` > 0.
        patience: validations without improvement before the run's end is decided.
        min_delta: improvement in validation accuracy that counts.
        over_multiple: the over-trained arm runs to this multiple of the best step.
        matched_target: keep the first validation at or above this accuracy in ``matched/``
            (``None``: none kept); the study sets it from stage 0.
        checkpoint_every: save a resumable checkpoint every N steps.
        max_bad_steps: abort (``TrainingDiverged``) after this many skipped updates in a row
            (non-finite loss or gradient; each is logged with ``skipped: true`` and ``loss: null``).
            Exploded weights (parameter norm above ``train.EXPLODED_NORM_FACTOR`` x its start)
            abort at once. 0 never aborts on skipped updates.
        seed: seed of prompt order and sampling.
        loss: clipping/aggregation of the policy-gradient loss (KL-to-reference is unused here).
        optim: optimizer and schedule.
        rollout: the sampler of the student's rollouts and of greedy validation.
        parallel: device and sharding (``[parallel]``: device, strategy ddp/fsdp, activation
            checkpointing, LoRA; :class:`warmstart.distributed.ParallelConfig`); the study fills it from ``[run]``.
    """

    init: str = ""
    teacher: str = ""
    data: str = ""
    teacher_model: str | None = None
    teacher_protocol: Literal["chat", "tokens"] = "chat"
    teacher_timeout_s: float = 60.0
    teacher_retries: int = 3
    estimator: str = "sampled_rkl"
    topk: int = 0
    reward_coef: float = 0.0
    extra_teachers: tuple[str, ...] = ()
    out_dir: str = "runs/opd"
    train_split: str = "train"
    train_problems: int = 0
    val_split: str = "validation"
    val_problems: int = 0
    steps: int = 100
    prompts_per_step: int = 16
    n: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 64
    update_epochs: int = 1
    micro_batch: int = 64
    eval_every: int = 0
    arm: Literal["early", "over"] = "over"
    patience: int = 3
    min_delta: float = 0.0
    over_multiple: float = 3.0
    matched_target: float | None = None
    checkpoint_every: int = 25
    max_bad_steps: int = 5
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        if self.n < 1 or self.prompts_per_step < 1:
            raise ConfigError("n and prompts_per_step must be >= 1")
        if self.loss.kl_coef:
            raise ConfigError("OPD has no reference-KL term: set loss.kl_coef = 0")
        if not self.teacher_timeout_s > 0 or self.teacher_retries < 0:
            raise ConfigError("teacher_timeout_s must be > 0 and teacher_retries >= 0")
        if self.eval_every < 0 or self.over_multiple < 1 or self.patience < 1:
            raise ConfigError("eval_every must be >= 0, over_multiple >= 1 and patience >= 1")
        if self.matched_target is not None and not self.eval_every:
            raise ConfigError("matched_target needs eval_every > 0 (the matched checkpoint is a validation)")
        self._validate_estimator()

    def _validate_estimator(self) -> None:
        if self.estimator not in losses.OPD_ESTIMATORS:
            raise ConfigError(
                f"estimator {self.estimator!r} is not one of {sorted(losses.OPD_ESTIMATORS)} "
                "(docs/OPD_ESTIMATORS.md)"
            )
        dense = self.estimator in losses.DENSE_OPD_ESTIMATORS
        if self.estimator in losses.TOPK_OPD_ESTIMATORS:
            if self.topk < 1:
                raise ConfigError(f"estimator {self.estimator!r}: topk must be >= 1, got {self.topk}")
        elif self.topk != 0:
            raise ConfigError(
                f"topk = {self.topk} is read only by {list(losses.TOPK_OPD_ESTIMATORS)}, not by "
                f"estimator {self.estimator!r}: remove it"
            )
        if not (math.isfinite(self.reward_coef) and self.reward_coef >= 0):
            raise ConfigError(f"reward_coef must be finite and >= 0 (0 = off), got {self.reward_coef}")
        remote = self.teacher.startswith(("http://", "https://"))
        if remote and dense:
            raise ConfigError(
                f"estimator {self.estimator!r} needs the teacher's full distribution, which an HTTP "
                f"teacher ({self.teacher}) does not send: an HTTP teacher supports only "
                "estimator = 'sampled_rkl' (or use a teacher checkpoint directory)"
            )
        if remote and self.extra_teachers:
            raise ConfigError(
                f"extra_teachers with an HTTP teacher ({self.teacher}): the teacher mixture needs "
                "in-process teachers (checkpoint directories) only"
            )
        for t in self.extra_teachers:
            if not t or t.startswith(("http://", "https://")):
                raise ConfigError(f"extra_teachers: {t!r} is not a teacher checkpoint directory")
        if dense and self.parallel.strategy == "fsdp":
            raise ConfigError(
                f"estimator {self.estimator!r} reads the LM head's weight directly, which FSDP "
                "shards: use parallel.strategy = 'ddp' (or estimator = 'sampled_rkl')"
            )


def make_teacher(cfg: OPDConfig, student_tokenizer=None):
    """The teacher scorer: in-process for a directory, HTTP for a URL.

    The student's tokenizer lets the HTTP scorer send each sampled response exactly
    as tokenised (and explain token-alignment failures).
    """
    from warmstart.teacher import HTTPScorer, InProcessScorer

    if cfg.teacher.startswith(("http://", "https://")):
        return HTTPScorer(
            cfg.teacher,
            model_name=cfg.teacher_model,
            tokenizer=student_tokenizer,
            timeout_s=cfg.teacher_timeout_s,
            max_retries=cfg.teacher_retries,
            protocol=cfg.teacher_protocol,
        )

    return InProcessScorer(load_frozen(cfg.teacher, cfg.parallel).model)


def make_teachers(cfg: OPDConfig, student_tokenizer=None, teacher=None) -> list:
    """``[teacher, *extra_teachers]`` as scorers (``teacher``: an already built first one)."""
    from warmstart.teacher import InProcessScorer

    first = teacher or make_teacher(cfg, student_tokenizer)
    extra = [InProcessScorer(load_frozen(path, cfg.parallel).model) for path in cfg.extra_teachers]
    teachers = [first, *extra]
    if cfg.estimator in losses.DENSE_OPD_ESTIMATORS:
        for t in teachers:
            if not callable(getattr(t, "logq", None)):
                raise ConfigError(
                    f"estimator {cfg.estimator!r} needs each teacher's full distribution; "
                    f"{type(t).__name__} gives only sampled-token log-probs (use an in-process teacher)"
                )
    return teachers


def teacher_logp(teachers: list, rollouts) -> torch.Tensor:
    """The teachers' log-prob of every sampled token: the one teacher's, else their mixture's."""
    if len(teachers) == 1:
        return teachers[0].score(rollouts).logp_BT
    return losses.mixture_logp(torch.stack([t.score(rollouts).logp_BT for t in teachers]))


def rewards_of(grades: list, rollouts, n: int) -> torch.Tensor:
    """The verifiable reward (correct: 1, else 0) of each row, as ``G x N`` groups of one prompt's samples."""
    prompt_B = torch.as_tensor(rollouts.prompt_index_B)
    groups = len(grades) // n
    if len(grades) != groups * n or not torch.equal(prompt_B, torch.arange(groups).repeat_interleave(n)):
        raise ValueError(
            "reward_coef needs the sampler's prompt-major rows (n samples of each prompt in turn)"
        )
    return torch.tensor([float(x.correct) for x in grades]).view(groups, n)


class DenseDistillation:
    """``Trainer.update``'s ``loss_fn`` for the dense estimators, one micro-batch at a time.

    loss = AGG(OPD_ESTIMATORS[estimator](student_logq, teacher_logq, mask, topk))     (loss.agg)
         + policy_gradient_loss(student_logp, old_logp, batch.adv_BT)     when ``reward``

    ``student_logq``: the student's full distribution from the update's own forward
    (:func:`warmstart.prompt_sharing.response_logq`, with gradient); ``teacher_logq``: the
    teachers' (:meth:`warmstart.teacher.InProcessScorer.logq`, their equal-weight mixture when
    several), scored here micro-batch by micro-batch so that no teacher's ``N x V`` tensor of
    the whole batch is ever held. ``batch.adv_BT`` carries ``reward_coef`` x the group-normalised
    reward (the KL itself is the first term, not an advantage). Sums the sampled-token reverse
    KL (``log p_s(y) - log p_t(y)``) of the micro-batches it sees, for the stage's log.
    """

    def __init__(self, teachers: list, estimator: str, topk: int, loss_cfg: LossConfig, reward: bool):
        self.teachers, self.topk, self.cfg, self.reward = teachers, topk, loss_cfg, reward
        self.estimator = estimator
        self.fn = losses.get("opd_estimators", estimator)
        self.rkl_sum, self.tokens = 0.0, 0

    def __repr__(self) -> str:
        return f"DenseDistillation({self.estimator!r})"

    def __call__(self, model, mb: TrainBatch, denom: float):
        from warmstart.prompt_sharing import response_logq

        cfg, ro = self.cfg, mb.rollouts
        s_logq_BTV = response_logq(model, ro, grad=True)
        device, vocab = s_logq_BTV.device, s_logq_BTV.shape[-1]
        t_logq_BTV = losses.mixture_logp(
            torch.stack([t.logq(ro, vocab=vocab).to(device) for t in self.teachers])
        )
        mask_BT = ro.response_mask_BT.to(device)
        kl_BT = self.fn(s_logq_BTV, t_logq_BTV, mask_BT, self.topk)
        kl = losses.get("aggregations", cfg.agg)(kl_BT, mask_BT, norm=cfg.norm, denom=denom)
        ids_BT1 = ro.response_ids_BT.to(device)[..., None]
        s_logp_BT = s_logq_BTV.gather(-1, ids_BT1).squeeze(-1)
        t_logp_BT = t_logq_BTV.gather(-1, ids_BT1).squeeze(-1)
        self.rkl_sum += float(((s_logp_BT.detach() - t_logp_BT) * mask_BT).sum())
        self.tokens += int(mask_BT.sum())
        total, stats = kl, {"kl": float(kl.detach()), "pg_loss": 0.0, "clipped_tokens": 0.0}
        if self.reward:
            old_BT = s_logp_BT.detach() if mb.old_logp_BT is None else mb.old_logp_BT.to(device)
            pg, pg_stats = losses.configured_pg_loss(
                s_logp_BT, old_BT, mb.adv_BT.to(device), mask_BT, cfg, denom
            )
            total = total + pg
            stats["pg_loss"] = float(pg.detach())
            stats["clipped_tokens"] = pg_stats["clip_frac"] * int(mask_BT.sum())
        return total, stats

    def reset(self) -> None:
        """Forget the sampled-token reverse KL summed so far (call before an update)."""
        self.rkl_sum, self.tokens = 0.0, 0

    def sampled_reverse_kl(self) -> float:
        """Token mean of ``log p_s(y) - log p_t(y)`` over the micro-batches since :meth:`reset` (all processes)."""
        from warmstart import distributed as dist_util

        total = torch.tensor([self.rkl_sum, float(self.tokens)], dtype=torch.float64)
        if torch.distributed.is_initialized() and dist_util.world_size() > 1:
            total = dist_util.all_reduce_sum(total).cpu()
        return float(total[0] / total[1].clamp(min=1))


def train_opd(cfg: OPDConfig, resume: bool = False, show_progress: bool = True, teacher=None) -> dict:
    """Run OPD; returns the result dict also written to ``<out_dir>/result.json``."""
    from warmstart.grading import grade
    from warmstart.rollout import SamplingParams
    from warmstart.scoring import score_rollouts

    require_set(cfg, "opd", "init", "teacher", "data")
    run = RunDir(cfg.out_dir, "opd")
    run.write_config(cfg)
    problems = load_split(cfg.data, cfg.train_split, cfg.train_problems or None)
    val = load_split(cfg.data, cfg.val_split, cfg.val_problems or None) if cfg.eval_every else []
    policy, trainer, extra = open_training(
        run, cfg.init, resume, cfg.optim, cfg.loss, cfg.steps * cfg.update_epochs, parallel=cfg.parallel
    )
    teachers = make_teachers(cfg, policy.processor.tokenizer, teacher)
    dense = cfg.estimator in losses.DENSE_OPD_ESTIMATORS
    dense_loss = (
        DenseDistillation(teachers, cfg.estimator, cfg.topk, cfg.loss, reward=cfg.reward_coef > 0)
        if dense
        else None
    )
    sampler = make_sampler(cfg.rollout, policy.model, policy.processor)
    logp_exact = sampler_logp_is_exact(sampler, cfg.temperature)
    step = extra.get("rollout_step", 0)
    sel = Selection.from_dict(extra["selection"]) if "selection" in extra else Selection(stop_at=cfg.steps)

    def validate(at: int) -> dict:
        """Validate at step ``at``: log fields, save best/ and matched/ as the shared rule decides."""
        nonlocal sel
        acc = greedy_accuracy(sampler, val, cfg.max_new_tokens)
        nll = teacher_forced_nll(policy.model, policy.processor, val)
        d = observe(
            sel,
            at,
            acc,
            nll,
            arm=cfg.arm,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
            over_multiple=cfg.over_multiple,
            max_steps=cfg.steps,
            matched_target=cfg.matched_target,
        )
        sel = d.selection
        if d.save_best:
            run.save_model(policy, "best")
        if d.save_matched:
            run.save_model(policy, "matched")
        return {"val_accuracy": acc, "val_loss": nll}

    if cfg.eval_every and step == 0:  # the init is a candidate, as in SFT
        run.log(0, **validate(0))
    with progress("opd", sel.stop_at, step, show_progress) as bar:
        while step < sel.stop_at:
            follow_share()  # the study scheduler's thread share (no-op outside a study)
            timer = Timer()
            idx = batch_indices(len(problems), cfg.prompts_per_step, step, cfg.seed)
            chunk = [problems[i] for i in idx]
            with timer("rollout"):
                policy.model.eval()
                ro = sampler.sample(
                    chunk,
                    SamplingParams(
                        n=cfg.n,
                        temperature=cfg.temperature,
                        max_new_tokens=cfg.max_new_tokens,
                        seed=step_seed(cfg.seed, step),
                    ),
                )
            mask_BT = ro.response_mask_BT
            g = [grade(t, chunk[int(q)]) for t, q in zip(ro.texts_B, ro.prompt_index_B)]
            rewards_GN = rewards_of(g, ro, cfg.n) if cfg.reward_coef else None
            with timer("scoring"):
                # dense estimators: the teachers score inside the update, one micro-batch at a time
                t_logp_BT = None if dense else teacher_logp(teachers, ro)
                # The student's log-probs and entropy: the sampler's own when exact (no
                # student forward here), else a scoring pass.
                if logp_exact:
                    s_logp_BT, s_entropy_BT = ro.logp_BT, ro.entropy_BT
                else:
                    student = score_rollouts(policy.model, ro, with_entropy=True)
                    s_logp_BT, s_entropy_BT = student.logp_BT, student.entropy_BT
            # the ratio only moves from 1 when the batch is reused
            old_logp_BT = s_logp_BT if cfg.update_epochs > 1 else None
            if dense:
                # the KL is the loss (DenseDistillation); the advantage carries the reward only
                zero_BT = torch.zeros(mask_BT.shape)
                adv_BT = losses.opd_reward_advantage(zero_BT, rewards_GN, mask_BT, cfg.reward_coef)
                batch = TrainBatch(ro, adv_BT, old_logp_BT=old_logp_BT)
            elif cfg.update_epochs == 1 and logp_exact and not cfg.reward_coef:
                # The advantage from the update's own forward (TrainBatch.distillation): a
                # teacher identical to the student gives exactly zero there.
                batch = TrainBatch.distillation(ro, t_logp_BT)
            else:
                adv_BT = losses.reverse_kl_advantage(s_logp_BT, t_logp_BT, mask_BT)
                if cfg.reward_coef:
                    adv_BT = losses.opd_reward_advantage(adv_BT, rewards_GN, mask_BT, cfg.reward_coef)
                batch = TrainBatch(ro, adv_BT, old_logp_BT=old_logp_BT, teacher_logp_BT=t_logp_BT)
            with timer("update"):
                for epoch in range(cfg.update_epochs):
                    if dense_loss is not None:
                        dense_loss.reset()
                    st = trainer.update(
                        batch, micro_batch=cfg.micro_batch, with_entropy=False, loss_fn=dense_loss
                    )
                    if dense_loss is not None and epoch == 0:
                        # both at the weights that sampled the batch (the first pass over it)
                        sampled_rkl = dense_loss.sampled_reverse_kl()
                        opd_kl = None if st.skipped else st.kl
                    sampler.sync_weights(policy.model)
            step += 1
            if not dense:
                sampled_rkl = float(losses.masked_mean(s_logp_BT - t_logp_BT, mask_BT))
            row = {
                "reverse_kl": sampled_rkl,
                # dense estimators: the estimator's own KL, aggregated as the loss (loss.agg)
                **({"opd_kl": opd_kl} if dense else {}),
                "entropy": float(losses.masked_mean(s_entropy_BT, mask_BT)),
                "neg_logp": float(-losses.masked_mean(s_logp_BT, mask_BT)),
                "accuracy": sum(x.correct for x in g) / len(g),
                "reward_mean": sum(x.correct for x in g) / len(g),
                "format_rate": sum(x.format_ok for x in g) / len(g),
                "response_len": float(mask_BT.sum(1).float().mean()),
                "sequences": int(mask_BT.shape[0]),
                "tokens": int(mask_BT.sum()),
                "loss": None if st.skipped else st.loss,
                **({"skipped": True} if st.skipped else {}),
                "grad_norm": st.grad_norm,
                "lr": st.lr,
                "clip_frac": st.clip_frac,
                "rollout_time_s": timer.t["rollout"],
                "scoring_time_s": timer.t["scoring"],
                "update_time_s": timer.t["update"],
                "step_time_s": sum(timer.t.values()),
            }
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == sel.stop_at):
                before = sel.stop_at
                row.update(validate(step))
                if sel.stop_at != before:
                    bar(0, total=sel.stop_at)
            run.log(step, **row)
            bar(1, rkl=row["reverse_kl"], entropy=row["entropy"])
            trainer.abort_if_diverging(cfg.max_bad_steps, at_step=step)
            if step % cfg.checkpoint_every == 0 and step < sel.stop_at:
                run.save_checkpoint(
                    trainer,
                    policy.processor,
                    extra={"rollout_step": step, "log_step": step, "selection": sel.to_dict()},
                )
    run.save_model(policy, "final")
    result = {
        "steps": step,
        "model": str(run.root / "final"),
        "teacher": cfg.teacher,
        "compute": run_compute(run.root / "metrics.jsonl"),
    }
    if cfg.eval_every:
        result.update(
            arm=cfg.arm,
            best_step=sel.best_step,
            best_val_accuracy=sel.best_acc,
            early_model=str(run.root / "best"),
            val_split=cfg.val_split,
            val_problems=len(val),
            selection=selection_summary(sel, cfg, step),
        )
    return run.finish(result)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--teacher", default=None, help="teacher directory or http:// URL (overrides the config)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(OPDConfig, args, teacher=args.teacher)
    print(json.dumps(train_opd(cfg, resume=args.resume, show_progress=not args.quiet), indent=2))
    return 0
