"""Pieces every stage loop shares: data order, teacher-forced batches, validation, progress."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from warmstart.data.schema import Problem

if TYPE_CHECKING:
    from warmstart.distributed import ParallelConfig
    from warmstart.models.load import Policy
    from warmstart.sampler import Sampler

log = logging.getLogger(__name__)


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the items in (0-based) ``step``'s batch.

    Epoch-wise shuffles seeded by ``(seed, epoch)``: any step's batch is a pure
    function of its number, so a resumed run sees exactly the data an uninterrupted
    one would.
    """
    if n_items <= 0:
        raise ValueError("no training items")
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_items)
        perm = np.random.default_rng([seed, epoch]).permutation(n_items)
        take = min(batch_size - len(out), n_items - offset)
        out.extend(int(i) for i in perm[offset : offset + take])
    return out


def teacher_forced(problems: Sequence[Problem], responses: Sequence[str], processor):
    """A :class:`~warmstart.rollout.Rollouts` of given responses (reference rationales), EOS appended.

    SFT and pretraining train on these through the same scoring/loss path as RL,
    with advantage 1 on every response token.
    """
    from warmstart.rollout import Rollouts, encode_prompts

    tok = processor.tokenizer
    prompts = encode_prompts(list(problems), processor)
    ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    T = max(len(x) for x in ids)
    B = len(ids)
    response_ids_BT = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    response_mask_BT = torch.zeros((B, T), dtype=torch.bool)
    for b, x in enumerate(ids):
        response_ids_BT[b, : len(x)] = torch.tensor(x)
        response_mask_BT[b, : len(x)] = True
    return Rollouts(
        prompts=prompts,
        prompt_index_B=torch.arange(B),
        response_ids_BT=response_ids_BT,
        response_mask_BT=response_mask_BT,
        logp_BT=torch.zeros(B, T),
        entropy_BT=torch.zeros(B, T),
        finish_reason_B=["stop"] * B,
        texts_B=list(responses),
    )


@torch.no_grad()
def greedy_accuracy(
    sampler: Sampler, problems: Sequence[Problem], max_new_tokens: int, batch_size: int = 64
) -> float:
    """Greedy (temperature 0) accuracy on ``problems``, decoded by ``sampler``.

    The sampler puts its model in eval mode while it samples (no dropout), and gives
    the caller's mode back.
    """
    from warmstart.grading import grade
    from warmstart.rollout import SamplingParams

    correct = 0
    for s in range(0, len(problems), batch_size):
        chunk = list(problems[s : s + batch_size])
        ro = sampler.sample(chunk, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens))
        correct += sum(grade(t, p).correct for t, p in zip(ro.texts_B, chunk))
    return correct / max(1, len(problems))


@torch.no_grad()
def family_pass_at_k(
    sampler: Sampler,
    problems: Sequence[Problem],
    k: int,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, float]:
    """pass@k per question family (``meta["family"]``): the fraction of its problems with a correct one of k T=1 samples.

    With exactly ``k`` samples per problem the unbiased pass@k estimator is this fraction.
    Problems without a family count under ``"?"``.
    """
    from warmstart.grading import grade
    from warmstart.rollout import SamplingParams

    solved: dict[str, list[bool]] = {}
    for s in range(0, len(problems), batch_size):
        chunk = list(problems[s : s + batch_size])
        ro = sampler.sample(
            chunk, SamplingParams(n=k, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed + s)
        )
        hit = [False] * len(chunk)
        for t, q in zip(ro.texts_B, ro.prompt_index_B):
            hit[int(q)] = hit[int(q)] or grade(t, chunk[int(q)]).correct
        for p, h in zip(chunk, hit):
            solved.setdefault(str(p.meta.get("family", "?")), []).append(h)
    return {f: sum(v) / len(v) for f, v in sorted(solved.items())}


@torch.no_grad()
def sampled_entropy(
    sampler: Sampler, problems: Sequence[Problem], max_new_tokens: int, seed: int = 0, batch_size: int = 64
) -> float:
    """Policy entropy (DESIGN.md): token mean of the full-vocabulary entropy of one T=1 sample per problem."""
    from warmstart.rollout import SamplingParams

    tot, n = 0.0, 0
    for s in range(0, len(problems), batch_size):
        ro = sampler.sample(
            list(problems[s : s + batch_size]),
            SamplingParams(n=1, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed + s),
        )
        tot += float((ro.entropy_BT * ro.response_mask_BT).sum())
        n += int(ro.response_mask_BT.sum())
    return tot / max(1, n)


@torch.no_grad()
def teacher_forced_nll(model, processor, problems: Sequence[Problem], batch_size: int = 64) -> float:
    """Token-mean NLL of the reference rationales (validation loss)."""
    from warmstart.scoring import score_rollouts

    model.eval()
    tot, n = 0.0, 0
    for s in range(0, len(problems), batch_size):
        chunk = [p for p in problems[s : s + batch_size] if p.rationale]
        if not chunk:
            continue
        tf = teacher_forced(chunk, [p.rationale for p in chunk], processor)
        sc = score_rollouts(model, tf, with_entropy=False)
        tot += float(-(sc.logp_BT * tf.response_mask_BT).sum())
        n += int(tf.response_mask_BT.sum())
    return tot / max(1, n)


def load_frozen(path: str, parallel: ParallelConfig | None = None, dtype: str = "float32") -> Policy:
    """A frozen model (GRPO reference, in-process teacher, evaluated model) placed as ``parallel`` says.

    The one way a stage loads a model it does not train (the trained one comes from
    :func:`warmstart.train.open_training`): on ``parallel.device`` (under a launch of several
    processes, each rank's own GPU), joined to the process group, and sharded with FSDP2
    when ``parallel.strategy = "fsdp"`` runs on several processes (every rank then scores
    the same rows together). ``dtype`` is its storage dtype: a frozen model needs no fp32
    master copy, so ``optim.dtype`` of the stage is the natural choice.
    """
    from warmstart import distributed
    from warmstart.models import load_policy

    parallel = parallel or distributed.ParallelConfig()
    device = distributed.resolve_device(parallel.device)
    distributed.init_distributed(device)
    policy = load_policy(path, dtype=dtype, device=str(device))
    if parallel.strategy == "fsdp" and distributed.world_size() > 1:
        distributed.shard_model(policy.model, parallel, bf16=False)
    return policy


def load_split(data: str, split: str, limit: int | None = None) -> list[Problem]:
    from warmstart.data.loaders import load_problems

    problems = load_problems(data, split=split).problems
    return problems[:limit] if limit else problems


def progress_columns(description: str = "{task.description}") -> list:
    """The columns of every progress display: name, bar, done/total, elapsed, eta."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return [
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]


@contextmanager
def progress(description: str, total: int, start: int = 0, enabled: bool = True):
    """A rich progress bar; yields ``update(advance=1, total=None, **fields)`` that also shows live fields.

    ``total`` moves the bar's end (a run whose stop step was just decided).
    """
    if not enabled:
        yield lambda advance=1, total=None, **fields: None
        return
    from rich.progress import Progress, TextColumn

    cols = [*progress_columns("[bold]{task.description}"), TextColumn("{task.fields[info]}")]
    with Progress(*cols, transient=False) as prog:
        task = prog.add_task(description, total=total, completed=start, info="")

        def update(advance: int = 1, total: int | None = None, **fields) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            prog.update(task, advance=advance, info=info, **({"total": total} if total else {}))

        yield update


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (TOML), ``--set key=value`` overrides, ``--out DIR``, ``--resume``."""
    parser.add_argument("--config", required=True, help="TOML config file")
    parser.add_argument(
        "--section", default=None, help="read the config from this top-level table of the file"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for nested, value parsed as TOML), repeatable",
    )
    parser.add_argument("--out", default=None, help="run directory (overrides the config's out_dir)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in the run directory"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(cls, args: argparse.Namespace, **extra):
    """Load ``cls`` from ``--config``/``--section``, apply ``--set`` overrides and keyword extras."""
    import tomllib

    from warmstart.config import ConfigError, from_dict

    path = Path(args.config)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if args.section:
        if not isinstance(data.get(args.section), dict):
            tables = [k for k, v in data.items() if isinstance(v, dict)]
            raise ConfigError(f"{path}: no table [{args.section}]; tables: {', '.join(tables) or 'none'}")
        data = data[args.section]
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is a value, not a table")
        node[parts[-1]] = value
    for k, v in extra.items():
        if v is not None:
            data[k] = v
    if getattr(args, "out", None):
        data["out_dir"] = args.out
    # cli.main appends an error's traceback to <run dir>/error.log (best guess until the config is valid).
    out_dir = data.get("out_dir") if isinstance(data.get("out_dir"), str) else getattr(cls, "out_dir", None)
    if out_dir:
        args._log_file = str(Path(out_dir) / "error.log")
    try:
        cfg = from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if getattr(cfg, "out_dir", None):
        args._log_file = str(Path(cfg.out_dir) / "error.log")
    return cfg


def run_compute(metrics_path: Path) -> dict:
    """A Stage-1 run's training compute from its own log: sequences, tokens and seconds of its steps.

    Sums the ``sequences``, ``tokens`` and ``step_time_s`` of every training row of
    ``metrics.jsonl`` (validations are not training compute and are not in
    ``step_time_s``); a resumed run logs each step once, so it counts each step once.
    ``seconds`` is the wall time of the training steps, ``steps`` the rows counted.
    """
    import json

    out = {"steps": 0, "sequences": 0, "tokens": 0, "seconds": 0.0}
    if not Path(metrics_path).exists():
        return out
    for line in Path(metrics_path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "step_time_s" not in row:  # the init's validation row
            continue
        out["steps"] += 1
        out["sequences"] += int(row.get("sequences", 0))
        out["tokens"] += int(row.get("tokens", 0))
        out["seconds"] += float(row["step_time_s"])
    out["seconds"] = round(out["seconds"], 3)
    return out
