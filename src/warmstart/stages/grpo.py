"""Stage-2 RL: GRPO with a verifiable reward, from any warm-start checkpoint.

Each step: sample ``n`` responses to each of ``prompts_per_step`` training prompts,
grade them into rewards, turn each group's rewards into group-relative advantages,
and take ``update_epochs`` passes of policy-gradient updates over the batch in
``mini_batches`` optimizer steps each. The full-vocabulary entropy of the rollouts is
logged every step: the trajectory the study is about.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    load_frozen,
    load_split,
    progress,
)
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

REWARDS = ("accuracy", "accuracy*format", "0.9*accuracy+0.1*format")


@dataclass(frozen=True)
class GRPOConfig:
    """Stage-2 GRPO.

    Attributes:
        init: warm-start checkpoint to start from (``--init`` overrides); must be set when the stage runs.
        data: problem data (path understood by ``load_problems``); must be set when the stage runs.
        out_dir: run directory.
        train_split: split with the training prompts.
        steps: rollout steps (each = one batch of prompts, sampled once).
        prompts_per_step: prompts per rollout batch.
        n: samples per prompt (group size).
        temperature: rollout temperature.
        top_p: rollout nucleus.
        max_new_tokens: max response tokens.
        max_prompt_tokens: prompts longer than this are skipped (counted, logged).
        reward: ``accuracy`` | ``accuracy*format`` (multiplicative) | ``0.9*accuracy+0.1*format``
            (the Geometry3K recipes' additive form).
        advantage: ``grpo`` (std-normalised) or ``drgrpo`` (mean-centred only).
        adv_eps: epsilon added to the group std.
        update_epochs: passes over each rollout batch.
        mini_batches: optimizer steps per pass (the rollout batch is split into this many).
        micro_batch: rows per forward/backward.
        dynamic_sampling: drop groups whose rewards are all equal and draw more prompts (DAPO).
        max_refills: extra sampling rounds allowed per step for dynamic sampling.
        overlong: what to do with truncated responses: ``none``, ``filter`` (no loss on them)
            or ``penalty`` (reward ``overlong_penalty``).
        overlong_penalty: reward of a truncated response when ``overlong = "penalty"``.
        loss: per-token loss, aggregation, clipping, KL and entropy terms.
        max_bad_steps: abort (``TrainingDiverged``) after this many skipped updates in a row,
            across mini-batches (non-finite loss or gradient; a step whose updates were all
            skipped is logged with ``skipped: true`` and ``loss: null``).
            Exploded weights (parameter norm above ``train.EXPLODED_NORM_FACTOR`` x its start)
            abort at once. 0 never aborts on skipped updates.
        checkpoint_every: save a resumable checkpoint every N steps.
        seed: seed of prompt order and sampling.
        optim: optimizer and schedule.
        rollout: the sampler of the rollouts.
        parallel: device and sharding (``[parallel]``: device, strategy ddp/fsdp, activation
            checkpointing, LoRA; :class:`warmstart.distributed.ParallelConfig`); the study fills it from ``[run]``.
    """

    init: str = ""
    data: str = ""
    out_dir: str = "runs/grpo"
    train_split: str = "train"
    steps: int = 100
    prompts_per_step: int = 16
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_prompt_tokens: int = 2048
    reward: str = "accuracy"
    advantage: str = "grpo"
    adv_eps: float = 1e-6
    update_epochs: int = 1
    mini_batches: int = 1
    micro_batch: int = 64
    dynamic_sampling: bool = False
    max_refills: int = 2
    overlong: Literal["none", "filter", "penalty"] = "none"
    overlong_penalty: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    max_bad_steps: int = 5
    checkpoint_every: int = 25
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        if self.reward not in REWARDS:
            raise ConfigError(f"reward {self.reward!r} is not one of {list(REWARDS)}")
        try:
            losses.get("advantages", self.advantage)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.n < 2:
            raise ConfigError("n (group size) must be >= 2 for group-relative advantages")
        if self.mini_batches < 1 or self.update_epochs < 1:
            raise ConfigError("mini_batches and update_epochs must be >= 1")


def combine_reward(name: str, accuracy: float, fmt: float) -> float:
    """The scalar reward from the accuracy and format terms (see ``GRPOConfig.reward``)."""
    if name == "accuracy":
        return accuracy
    if name == "accuracy*format":
        return accuracy * fmt
    if name == "0.9*accuracy+0.1*format":
        return 0.9 * accuracy + 0.1 * fmt
    raise ValueError(f"unknown reward {name!r}; valid: {list(REWARDS)}")


def _sample_groups(sampler, problems, cfg: GRPOConfig, step: int):
    """Sample and grade one step's groups (with dynamic-sampling refills). Returns (rollouts, rewards_GN, stats)."""
    from warmstart.grading import grade
    from warmstart.rollout import Rollouts, SamplingParams

    kept, rewards, accs, fmts = [], [], [], []
    seen_groups = equal_groups = 0
    all_acc, all_fmt, all_rew = [], [], []
    # Each rollout step owns 1 + max_refills consecutive batch slots of the epoch-seeded
    # prompt order, so refills never repeat a prompt of the same step and a resumed run
    # draws the same prompts; without dynamic sampling the extra slots go unused.
    for refill in range(1 + (cfg.max_refills if cfg.dynamic_sampling else 0)):
        idx = batch_indices(
            len(problems), cfg.prompts_per_step, step * (1 + cfg.max_refills) + refill, cfg.seed
        )
        chunk = [problems[i] for i in idx]
        params = SamplingParams(
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=step_seed(cfg.seed, step, refill),
        )
        ro = sampler.sample(chunk, params)
        g = [grade(t, chunk[int(q)]) for t, q in zip(ro.texts_B, ro.prompt_index_B)]
        acc = torch.tensor([float(x.correct) for x in g]).view(-1, cfg.n)
        fmt = torch.tensor([float(x.format_ok) for x in g]).view(-1, cfg.n)
        rew = torch.tensor(
            [combine_reward(cfg.reward, float(x.correct), float(x.format_ok)) for x in g]
        ).view(-1, cfg.n)
        if cfg.overlong == "penalty":
            trunc = torch.tensor([r == "length" for r in ro.finish_reason_B]).view(-1, cfg.n)
            rew[trunc] = cfg.overlong_penalty
        all_acc.append(acc)
        all_fmt.append(fmt)
        all_rew.append(rew)
        eq = losses.all_equal_groups(rew)
        seen_groups += rew.shape[0]
        equal_groups += int(eq.sum())
        keep_q = [q for q in range(rew.shape[0]) if not (cfg.dynamic_sampling and eq[q])]
        if keep_q:
            rows = [q * cfg.n + j for q in keep_q for j in range(cfg.n)]
            kept.append(ro.select(rows))
            rewards.append(rew[keep_q]), accs.append(acc[keep_q]), fmts.append(fmt[keep_q])
        if not cfg.dynamic_sampling or sum(r.shape[0] for r in rewards) >= cfg.prompts_per_step:
            break
    stats = {
        "reward_mean": float(torch.cat(all_rew).mean()),
        "accuracy": float(torch.cat(all_acc).mean()),
        "format_rate": float(torch.cat(all_fmt).mean()),
        "frac_all_equal_groups": equal_groups / max(1, seen_groups),
        "groups_kept": sum(r.shape[0] for r in rewards),
    }
    if not kept:
        return None, None, stats
    ro = kept[0] if len(kept) == 1 else Rollouts.cat(kept)
    if cfg.dynamic_sampling:  # keep exactly prompts_per_step groups when refills overshoot
        G = min(cfg.prompts_per_step, ro.response_ids_BT.shape[0] // cfg.n)
        ro = ro.select(list(range(G * cfg.n)))
        return ro, torch.cat(rewards)[:G], stats
    return ro, torch.cat(rewards), stats


def train_grpo(cfg: GRPOConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Run GRPO; returns the result dict also written to ``<out_dir>/result.json``."""
    from warmstart.scoring import score_rollouts

    require_set(cfg, "grpo", "init", "data")
    run = RunDir(cfg.out_dir, "grpo")
    run.write_config(cfg)
    problems = load_split(cfg.data, cfg.train_split)
    total_updates = cfg.steps * cfg.update_epochs * cfg.mini_batches
    policy, trainer, extra = open_training(
        run, cfg.init, resume, cfg.optim, cfg.loss, total_updates, parallel=cfg.parallel
    )
    ref = (
        load_frozen(cfg.init, cfg.parallel, cfg.optim.dtype) if cfg.loss.kl_coef > 0 else None
    )  # frozen reference only when used
    sampler = make_sampler(cfg.rollout, policy.model, policy.processor)
    logp_exact = sampler_logp_is_exact(sampler, cfg.temperature)
    step = extra.get("rollout_step", 0)
    with progress("grpo", cfg.steps, step, show_progress) as bar:
        while step < cfg.steps:
            follow_share()  # the study scheduler's thread share (no-op outside a study)
            timer = Timer()
            with timer("rollout"):
                policy.model.eval()
                ro, rewards_GN, stats = _sample_groups(sampler, problems, cfg, step)
            row = dict(stats)
            if ro is None:  # every group all-equal even after refills: nothing to learn from
                step += 1
                run.log(step, **row, skipped=True, step_time_s=sum(timer.t.values()))
                bar(1, reward=row["reward_mean"])
                continue
            mask_BT = ro.response_mask_BT.clone()
            row["entropy"] = float(losses.masked_mean(ro.entropy_BT, mask_BT))
            row["neg_logp"] = float(-losses.masked_mean(ro.logp_BT, mask_BT))
            row["response_len"] = float(mask_BT.sum(1).float().mean())
            row["truncated_frac"] = sum(r == "length" for r in ro.finish_reason_B) / len(ro.finish_reason_B)
            if cfg.overlong == "filter":
                trunc = torch.tensor([r == "length" for r in ro.finish_reason_B])
                mask_BT[trunc] = False
                ro.response_mask_BT = mask_BT
            adv_B = losses.get("advantages", cfg.advantage)(rewards_GN, cfg.adv_eps).reshape(-1)
            with timer("scoring"):
                n_updates = cfg.update_epochs * cfg.mini_batches
                # Old log-probs only matter when the batch is reused (ratio != 1 afterwards);
                # the in-process sampler's are exact at temperature 1: no scoring pass then.
                old_logp_BT = None
                if n_updates > 1:
                    old_logp_BT = (
                        ro.logp_BT
                        if logp_exact
                        else score_rollouts(policy.model, ro, with_entropy=False).logp_BT
                    )
                batch = TrainBatch(
                    ro,
                    adv_B[:, None].expand_as(mask_BT).float(),
                    old_logp_BT=old_logp_BT,
                    ref_logp_BT=(
                        score_rollouts(ref.model, ro, with_entropy=False).logp_BT if ref is not None else None
                    ),
                )
            with timer("update"):
                B = mask_BT.shape[0]
                per = -(-B // cfg.mini_batches)
                agg_stats = []
                for epoch in range(cfg.update_epochs):
                    order = (
                        torch.randperm(
                            B, generator=torch.Generator().manual_seed(cfg.seed + step * 31 + epoch)
                        )
                        if n_updates > 1
                        else torch.arange(B)
                    )
                    for m in range(cfg.mini_batches):
                        rows = order[m * per : (m + 1) * per].tolist()
                        st = trainer.update(
                            batch.select(rows), micro_batch=cfg.micro_batch, with_entropy=False
                        )
                        sampler.sync_weights(policy.model)
                        agg_stats.append(st)
            step += 1
            done = [s for s in agg_stats if not s.skipped]  # skipped updates carry NaN numbers

            def mean(key: str, stats=done) -> float | None:
                return sum(getattr(s, key) for s in stats) / len(stats) if stats else None

            row.update(
                loss=mean("loss"),
                kl=mean("kl"),
                clip_frac=mean("clip_frac"),
                grad_norm=mean("grad_norm"),
                lr=agg_stats[-1].lr,
                skipped_updates=sum(s.skipped for s in agg_stats),
                **({"skipped": True} if not done else {}),
                rollout_time_s=timer.t.get("rollout", 0.0),
                scoring_time_s=timer.t.get("scoring", 0.0),
                update_time_s=timer.t.get("update", 0.0),
                step_time_s=sum(timer.t.values()),
            )
            run.log(step, **row)
            bar(1, reward=row["reward_mean"], entropy=row["entropy"])
            trainer.abort_if_diverging(cfg.max_bad_steps, at_step=step)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                run.save_checkpoint(trainer, policy.processor, extra={"rollout_step": step, "log_step": step})
    run.save_model(policy, "final")
    result = {"steps": step, "model": str(run.root / "final"), "init": cfg.init}
    return run.finish(result)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--init", default=None, help="warm-start checkpoint (overrides the config's init)")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(GRPOConfig, args, init=args.init)
    print(json.dumps(train_grpo(cfg, resume=args.resume, show_progress=not args.quiet), indent=2))
    return 0
