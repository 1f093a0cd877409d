"""The study's configuration: data, the two models, the Stage-1 arms, Stage-2, eval and execution.

Every stage table is the stage's own config class (defaults live there, once); the
study fills in the paths it owns (``init``, ``data``, ``teacher``, ``out_dir``) and the
study-level ``[rollout]`` table when it plans (:mod:`warmstart.study.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warmstart.config import ConfigError, from_dict, read_toml
from warmstart.data.synthetic import SynthConfig
from warmstart.distributed import ParallelConfig
from warmstart.evaluate import EvalSettings
from warmstart.models.load import LoraSpec
from warmstart.sampler import RolloutConfig
from warmstart.stages.grpo import GRPOConfig
from warmstart.stages.pretrain import PretrainConfig
from warmstart.study.arms import ArmConfig, stage1_runs
from warmstart.study.stage0 import Stage0Check

__all__ = [
    "GRPO_PRESETS",
    "DataConfig",
    "ModelSource",
    "RunSettings",
    "SplitRef",
    "StudyConfig",
    "deep_merge",
    "load_study",
    "parse_study",
]


@dataclass(frozen=True)
class SplitRef:
    """One split of one problem source.

    Attributes:
        path: file or folder understood by ``load_problems``.
        split: split name inside it (``None``: the whole file).
        limit: use only the first N problems (0 = all).
    """

    path: str = ""
    split: str | None = None
    limit: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the problems come from.

    Attributes:
        kind: ``synthetic`` (the study generates the embedded world into ``<run>/data``)
            or ``files`` (the three splits below point at real data).
        synth: generator settings for ``kind = "synthetic"``.
        train: training problems (Stage-1 and Stage-2) for ``kind = "files"``.
        validation: in-domain evaluation split (also SFT validation) for ``kind = "files"``.
        ood: out-of-domain evaluation split for ``kind = "files"``.
    """

    kind: Literal["synthetic", "files"] = "synthetic"
    synth: SynthConfig = field(default_factory=SynthConfig)
    train: SplitRef = field(default_factory=SplitRef)
    validation: SplitRef = field(default_factory=SplitRef)
    ood: SplitRef = field(default_factory=SplitRef)


@dataclass(frozen=True)
class ModelSource:
    """The base student or the teacher.

    Attributes:
        path: checkpoint directory or hub id (teacher: also an ``http://`` URL of a
            server speaking the OpenAI protocol with ``prompt_logprobs``). Empty with
            ``pretrain``: the study trains a toy model itself.
        pretrain: stage-0 settings when the study builds this model from scratch (the
            study sets ``data``, ``out_dir`` and ``rollout``).
        eval_path: checkpoint to evaluate when ``path`` is a server URL (evaluation samples
            in-process); empty: a served teacher is not evaluated.
    """

    path: str = ""
    pretrain: PretrainConfig | None = None
    eval_path: str = ""


@dataclass(frozen=True)
class RunSettings:
    """How the study executes: processes, devices, sharding, and which GPU does what.

    Attributes:
        jobs: steps run side by side (worker processes).
        threads_per_job: torch threads in each worker.
        share_idle_threads: give idle slots' threads to the steps that run (a lone job uses
            every core). Off by default: a step's thread count then depends on when its
            partner finished, and the thread count changes float summation order (weights
            differ by ~2e-5 after 3 SFT steps at 1 vs 2 threads), so a re-run of the study
            would no longer give bit-identical numbers.
        device: torch device of every model of every stage and eval: ``"cpu"``, ``"cuda"``
            or ``"cuda:N"`` (under a launch of several processes each rank takes the GPU of
            its ``LOCAL_RANK``); the ``device`` of every stage's ``parallel`` table.
        strategy: training strategy of every stage, ``"ddp"`` (full replicas; one process
            is plain training) or ``"fsdp"`` (FSDP2 sharding); see
            :class:`warmstart.distributed.ParallelConfig`.
        activation_checkpointing: recompute decoder layers in backward (every stage).
        reshard_after_forward: FSDP only: free gathered weights after each unit's forward.
        lora: train LoRA adapters only (``[run.lora]``: r, alpha, dropout, target_modules).
        student_gpus: GPU indices of the training processes (one process per GPU, launched
            with ``torchrun --nproc_per_node len(student_gpus)`` under
            ``CUDA_VISIBLE_DEVICES`` = these); empty: one process on ``device``. The memory
            plan shards over this many GPUs.
        teacher_gpus: GPU indices the teacher server runs on (``CUDA_VISIBLE_DEVICES`` of
            ``vllm serve``, with ``--tensor-parallel-size`` = their count); informational
            for warmstart, which does not start the server, and checked to be apart from
            ``student_gpus``.
        rollout_gpus: GPU indices of the vLLM rollout engine (``rollout.backend = "vllm"``),
            apart from ``student_gpus``; may share the teacher's.
        gpu_memory_gb: memory of one GPU (GiB) that the dry run's memory plan must fit;
            0 = do not check.
    """

    jobs: int = 2
    threads_per_job: int = 1
    share_idle_threads: bool = False
    device: str = "cpu"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    lora: LoraSpec | None = None
    student_gpus: tuple[int, ...] = ()
    teacher_gpus: tuple[int, ...] = ()
    rollout_gpus: tuple[int, ...] = ()
    gpu_memory_gb: float = 0.0

    def validate(self) -> None:
        self.parallel().validate()
        for name in ("student_gpus", "teacher_gpus", "rollout_gpus"):
            ids = getattr(self, name)
            if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
                raise ConfigError(f"run.{name} must list distinct GPU indices >= 0, got {list(ids)}")
            if ids and not self.device.startswith("cuda"):
                raise ConfigError(f"run.{name} is set but run.device is {self.device!r}: use device = 'cuda'")
        for other in ("teacher_gpus", "rollout_gpus"):
            shared = sorted(set(self.student_gpus) & set(getattr(self, other)))
            if shared:
                raise ConfigError(
                    f"run.student_gpus and run.{other} share GPU(s) {shared}: give each its own"
                )
        if len(self.student_gpus) > 1 and ":" in self.device:
            raise ConfigError(
                "run.device must be 'cuda' (not 'cuda:N') when run.student_gpus lists several GPUs"
            )
        if self.gpu_memory_gb < 0:
            raise ConfigError(f"run.gpu_memory_gb must be >= 0, got {self.gpu_memory_gb}")

    @property
    def processes(self) -> int:
        """Training processes (one per student GPU)."""
        return max(1, len(self.student_gpus))

    def parallel(self) -> ParallelConfig:
        """The ``parallel`` table every stage gets."""
        return ParallelConfig(
            device=self.device,
            strategy=self.strategy,
            activation_checkpointing=self.activation_checkpointing,
            reshard_after_forward=self.reshard_after_forward,
            lora=self.lora,
        )


@dataclass(frozen=True)
class StudyConfig:
    """The whole two-stage study.

    Attributes:
        name: study name; outputs go to ``<out_root>/<name>``.
        out_root: parent folder of run directories.
        data: problem sources.
        student: the base student.
        teacher: the teacher (OPD, and teacher-generated SFT solutions if chosen).
        arm: the Stage-1 arms (``[[arm]]`` tables), in report order; the first is the
            reference arm of paired differences. Each gets a Stage-2 run from its checkpoint.
        stage0: the stage-0 check (``[stage0]``): the teacher clearly stronger than the base
            student on every family, and the matched-outcome target; ``None``: no check (and
            no ``checkpoint = "matched"`` arm).
        lr_grid: learning rates every Stage-1 run is trained at (the same grid for every
            method); each run's learning rate is the one whose best selection accuracy is
            highest (ties: the smaller), chosen on seed 0 and kept for the other seeds.
            Empty: each arm's own ``optim.lr``.
        seeds: training seeds of every arm (Stage-1 and its Stage-2): seed 0 is the arm
            itself, seed k > 0 the replica ``<arm>@s<k>`` with every stage seed + k (the
            same base student, teacher and data). The report pools replicas per problem.
        grpo: Stage-2 settings, the same for every arm (the study sets ``init``,
            ``data``, ``train_split``, ``out_dir`` and ``rollout``).
        grpo_preset: named Stage-2 preset (``geo3k-easyr1``) or empty; the ``[grpo]``
            table overrides its values. Applied when the file is read (:func:`parse_study`),
            so ``grpo`` holds the merged settings.
        rollout: the sampling engine of every stage and every evaluation.
        eval: evaluation settings of every model (the study sets ``rollout``).
        run: execution settings.
    """

    name: str = "toy"
    out_root: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelSource = field(default_factory=ModelSource)
    teacher: ModelSource = field(default_factory=ModelSource)
    arm: tuple[ArmConfig, ...] = ()
    stage0: Stage0Check | None = None
    lr_grid: tuple[float, ...] = ()
    seeds: int = 1
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    grpo_preset: str = ""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> None:
        if self.data.kind == "files":
            for name in ("train", "validation", "ood"):
                if not getattr(self.data, name).path:
                    raise ConfigError(f"data.{name}.path is required when data.kind = 'files'")
        for who in ("student", "teacher"):
            src = getattr(self, who)
            if not src.path and src.pretrain is None:
                raise ConfigError(
                    f"{who}: give a path (checkpoint, hub id or URL) or a [{who}.pretrain] table"
                )
        if self.grpo_preset and self.grpo_preset not in GRPO_PRESETS:
            raise ConfigError(f"grpo_preset {self.grpo_preset!r} is not one of {sorted(GRPO_PRESETS)}")
        if not self.arm:
            raise ConfigError("no Stage-1 arm: add at least one [[arm]] table")
        names = [a.name for a in self.arm]
        if len(set(names)) != len(names):
            raise ConfigError(f"arm names must be unique, got {names}")
        stage1_runs(self.arm)  # raises on two arms that are the same model
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        if any(not lr > 0 for lr in self.lr_grid) or len(set(self.lr_grid)) != len(self.lr_grid):
            raise ConfigError(f"lr_grid must list distinct learning rates > 0, got {list(self.lr_grid)}")
        if self.teacher.path.startswith(("http://", "https://")):
            from warmstart.losses import DENSE_OPD_ESTIMATORS

            opd = [a for a in self.arm if a.opd is not None]
            dense = [a.name for a in opd if a.opd.estimator in DENSE_OPD_ESTIMATORS]
            mixed = [a.name for a in opd if a.opd.extra_teachers]
            if mixed:
                raise ConfigError(
                    f"arm(s) {mixed}: extra_teachers (a teacher mixture) needs in-process teachers, and the "
                    f"study's teacher is the HTTP server {self.teacher.path}"
                )
            if dense:
                raise ConfigError(
                    f"arm(s) {dense}: a dense OPD estimator needs the teacher's full distribution, which the "
                    f"HTTP teacher {self.teacher.path} does not send; use estimator = 'sampled_rkl' there, or a "
                    "teacher checkpoint directory"
                )
        matched = [a.name for a in self.arm if a.checkpoint == "matched"]
        if matched and self.stage0 is None:
            raise ConfigError(
                f"arm(s) {matched}: checkpoint 'matched' needs a [stage0] table (it sets the target)"
            )
        # The study-level [rollout] is the engine of every stage: a stage's own table would be ignored.
        tables = [(f"arm {a.name}: {a.method}", a.stage) for a in self.arm] + [("grpo", self.grpo)]
        tables += [(f"{w}.pretrain", getattr(self, w).pretrain) for w in ("student", "teacher")]
        tables += [("eval", self.eval)]
        for where, cfg in tables:
            if cfg is not None and cfg.rollout != RolloutConfig():
                raise ConfigError(f"{where}.rollout: set the sampling engine in the study's [rollout] table")
        self._check_sft_validation_split()

    def _check_sft_validation_split(self) -> None:
        """SFT early stopping must select on a split other than the reported in-domain one.

        Otherwise the reported in-domain accuracy of the SFT arms carries selection bias
        (synthetic data: validate on ``test``).
        """
        if self.data.kind == "synthetic":
            same_source, reported = True, "validation"
        else:
            same_source = self.data.train.path == self.data.validation.path
            reported = self.data.validation.split or "validation"
        for a in self.arm:
            if a.method == "sft" and same_source and a.stage.val_split == reported:
                raise ConfigError(
                    f"arm {a.name}: sft.val_split = {reported!r} is the split the study reports; "
                    "early stopping on it biases the reported accuracy (synthetic data: use 'test')"
                )


# The widely used Geometry3K GRPO recipe (EasyR1's example), written out explicitly.
GRPO_PRESETS: dict[str, dict[str, Any]] = {
    "geo3k-easyr1": {
        "optim": {
            "lr": 1e-6,
            "weight_decay": 0.01,
            "warmup_steps": 0,
            "grad_clip": 1.0,
            "schedule": "constant",
            "dtype": "bfloat16",
        },
        "prompts_per_step": 512,  # rollout batch
        "mini_batches": 4,  # update batch 128 = 512 / 4
        "update_epochs": 1,
        "n": 5,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_prompt_tokens": 2048,
        "max_new_tokens": 2048,
        "reward": "0.9*accuracy+0.1*format",
        "advantage": "grpo",
        # clip_high 0.3 is this recipe's clip-higher; most frameworks default to 0.2 for both.
        "loss": {
            "policy_loss": "ppo_clip",
            "agg": "token-mean",
            "clip_low": 0.2,
            "clip_high": 0.3,
            "kl_coef": 0.01,
            "kl_estimator": "k3",
        },
        # 15 epochs over the 2,101 Geometry3K training problems at 512 prompts per step.
        "steps": 62,
    }
}


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s values on top, nested tables merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_same_as(arms: list[Any]) -> list[Any]:
    """``[[arm]]`` tables with ``same_as = "<arm>"`` given that arm's method and method table.

    Arms read from one run (early / over / matched) share its settings; ``same_as`` says
    so once instead of repeating the table. The named arm must come earlier and have its
    own table; an arm with ``same_as`` may not have a method table of its own.
    """
    out: list[Any] = []
    by_name: dict[str, dict] = {}
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or "same_as" not in arm:
            out.append(arm)
            if isinstance(arm, dict) and "name" in arm:
                by_name[arm["name"]] = arm
            continue
        ref = arm["same_as"]
        src = by_name.get(ref)
        where = f"arm[{i}] ({arm.get('name', '?')})"
        if src is None:
            raise ConfigError(
                f"{where}: same_as = {ref!r} names no earlier [[arm]]; earlier: {sorted(by_name)}"
            )
        method = src.get("method")
        if arm.get("method", method) != method:
            raise ConfigError(
                f"{where}: same_as = {ref!r} is a {method} arm, this one says {arm['method']!r}"
            )
        own = [k for k in ("sft", "opd") if k in arm]
        if own:
            raise ConfigError(f"{where}: same_as = {ref!r} gives the [{own[0]}] table; remove this arm's own")
        new = {k: v for k, v in arm.items() if k != "same_as"}
        new["method"] = method
        if method in src:
            new[method] = src[method]
        out.append(new)
        by_name[new.get("name", "?")] = new
    return out


def parse_study(data: dict[str, Any]) -> StudyConfig:
    """The study from a TOML-shaped dict: ``same_as`` arms resolved, ``[grpo]`` merged over ``grpo_preset``."""
    if isinstance(data.get("arm"), list):
        data = {**data, "arm": resolve_same_as(data["arm"])}
    preset = data.get("grpo_preset", "")
    if preset and preset not in GRPO_PRESETS:
        raise ConfigError(f"grpo_preset {preset!r} is not one of {sorted(GRPO_PRESETS)}")
    if preset:
        data = {**data, "grpo": deep_merge(GRPO_PRESETS[preset], data.get("grpo", {}))}
    return from_dict(StudyConfig, data)


def read_study_toml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A study file's dict, with ``extends = "<file>"`` (a path relative to it) merged under it.

    The file's own tables override the extended file's key by key (:func:`deep_merge`);
    a list (``[[arm]]``, ``lr_grid``) given in the file replaces the extended one whole.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: extends makes a cycle: {' -> '.join(map(str, (*_seen, path)))}")
    data = read_toml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be a file name (a string), got {base!r}")
    target = (path.parent / base).resolve()
    if not target.is_file():
        raise ConfigError(f"{path}: extends = {base!r}: no such file {target}")
    return deep_merge(read_study_toml(target, (*_seen, path)), data)


def load_study(path: str | Path) -> StudyConfig:
    """Read a study TOML file (``extends`` resolved; errors name the file and the dotted key)."""
    data = read_study_toml(path)
    try:
        return parse_study(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
