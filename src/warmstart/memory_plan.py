"""Per-GPU memory of a training stage, before anything is loaded: pure arithmetic.

``warmstart run --dry-run`` prints this plan for every training stage of a study and
refuses a plan that does not fit the GPU memory the config states (``run.gpu_memory_gb``).

What one GPU of the student holds (P parameters, N processes; FSDP divides by N):

=====================  ==========================================================
master weights         fp32, 4 B/param (``fsdp``: 4P/N)
compute copy           bf16 mixed precision: ``fsdp`` gathers one unit at a time in bf16
                       (current + prefetched: 2 x the largest unit x 2 B); ``ddp``'s
                       autocast caches a bf16 copy of every weight (2P)
gradients              fp32, 4 B/param (``fsdp``: 4P/N; LoRA: adapters only)
optimizer              AdamW's two fp32 moments, 8 B/param (``fsdp``: 8P/N; LoRA: adapters)
activations            one micro-batch: per decoder layer and token the tensors autograd
                       keeps (about ``8 H + 4 I`` values: norms, q/o, residuals, the
                       MLP's gate, up, product); with activation checkpointing only each
                       layer's input (H) plus one layer recomputed. Plus the chunked LM
                       head: two ``chunk x V`` fp32 buffers and, for bf16 weights, one
                       fp32 copy of the head (V x H x 4 B)
reference model        GRPO with a KL term: a frozen copy in the compute dtype (``fsdp``: /N)
rollout                local engine: the KV cache of ``max_batch_rows`` rows (all rows of a
                       step when 0) at prompt + response length, plus its packed copy of
                       the weights (and, under ``fsdp``, the gathered model it reads);
                       vLLM: its own process and GPUs, not counted here
reserve                CUDA context, NCCL buffers, allocator fragmentation (a fixed guess)
=====================  ==========================================================

Vision-tower activations are not counted (a Geometry3K diagram is a few hundred patches:
well under a GB). Estimates, not measurements: they size a plan; the GPU check script
measures the real peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["GiB", "KNOWN_SHAPES", "MemoryPlan", "ModelShape", "TrainSetup", "plan_memory"]

GiB = 1024**3
RESERVE_GB = 4.0  # CUDA context + NCCL + fragmentation on each GPU


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2.5-VL (Qwen2-VL) that memory depends on.

    Attributes:
        vocab: LM-head rows (``text_config.vocab_size``).
        hidden: text hidden size H.
        layers: text decoder layers.
        intermediate: text MLP size I.
        heads: attention heads.
        kv_heads: key/value heads.
        head_dim: per-head size (``hidden // heads`` unless the config says).
        tied: LM head shares the embedding.
        vision_params: parameters of the vision tower (blocks, patch embedding, merger).
        vision_block_params: parameters of one vision block (an FSDP unit).
    """

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = False
    vision_params: int = 0
    vision_block_params: int = 0

    @property
    def layer_params(self) -> int:
        """One decoder layer: q/k/v (with bias), o, gate/up/down, two RMSNorms."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = (h * q + q) + 2 * (h * kv + kv) + q * h
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def text_params(self) -> int:
        head = 0 if self.tied else self.embed_params
        return self.embed_params + self.layers * self.layer_params + self.hidden + head

    @property
    def num_params(self) -> int:
        return self.text_params + self.vision_params

    @property
    def largest_unit(self) -> int:
        """Parameters of the largest FSDP unit (the embedding / LM head at Qwen's vocabulary)."""
        return max(self.embed_params, self.layer_params, self.vision_block_params)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys + values of every layer for one token."""
        return self.layers * 2 * self.kv_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a checkpoint's ``config.json`` (as a dict)."""
        text = config.get("text_config") or config
        hidden, heads = text["hidden_size"], text["num_attention_heads"]
        vision = config.get("vision_config") or {}
        v_total = v_block = 0
        if vision:
            vh, vi = vision["hidden_size"], vision["intermediate_size"]
            patch = (
                vision.get("in_channels", 3)
                * vision.get("temporal_patch_size", 2)
                * vision["patch_size"] ** 2
            )
            merge = vision.get("spatial_merge_size", 2) ** 2 * vh
            out = vision.get("out_hidden_size", hidden)
            # norms, qkv (bias), proj (bias), gated MLP (biases)
            v_block = 2 * vh + (vh * 3 * vh + 3 * vh) + (vh * vh + vh) + 2 * (vh * vi + vi) + (vi * vh + vh)
            merger = vh + (merge * merge + merge) + (merge * out + out)
            v_total = patch * vh + vision["depth"] * v_block + merger
        return cls(
            vocab=text["vocab_size"],
            hidden=hidden,
            layers=text["num_hidden_layers"],
            intermediate=text["intermediate_size"],
            heads=heads,
            kv_heads=text.get("num_key_value_heads", heads),
            head_dim=text.get("head_dim") or hidden // heads,
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            vision_params=v_total,
            vision_block_params=v_block,
        )


# Published configs (facts from the checkpoints' config.json), for a dry run without the weights.
_QWEN25_VL_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "out_hidden_size": 3584,
    "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3,
}  # fmt: skip
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": ModelShape.from_hf_config(
        {
            "text_config": {
                "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
            },
            "tie_word_embeddings": False,
            "vision_config": _QWEN25_VL_VISION,
        }
    ),
}  # fmt: skip


@dataclass(frozen=True)
class TrainSetup:
    """One training stage as memory sees it.

    Attributes:
        name: the stage (for the printout).
        strategy: ``ddp`` or ``fsdp``.
        processes: training processes (one GPU each).
        bf16: mixed precision (``optim.dtype = "bfloat16"``); else everything fp32.
        activation_checkpointing: recompute layers in backward.
        micro_batch: rows per forward/backward.
        seq_len: tokens per row (prompt + response).
        lora_params: trainable LoRA parameters (0: full training).
        reference: a frozen reference model (GRPO with a KL term).
        rollout_rows: rows the local engine decodes at once (0: no local rollout in this stage).
        rollout_len: prompt + response tokens of a decoded row.
        chunk: positions per chunk of the LM head.
    """

    name: str
    strategy: Literal["ddp", "fsdp"] = "ddp"
    processes: int = 1
    bf16: bool = True
    activation_checkpointing: bool = False
    micro_batch: int = 1
    seq_len: int = 2048
    lora_params: int = 0
    reference: bool = False
    rollout_rows: int = 0
    rollout_len: int = 0
    chunk: int = 1024


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU, by item (see the module docstring), and the total."""

    setup: TrainSetup
    items: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.items.values())

    def fits(self, gpu_gb: float) -> bool:
        return self.total <= gpu_gb * GiB

    def lines(self, gpu_gb: float = 0.0) -> list[str]:
        s = self.setup
        head = (
            f"{s.name}: {s.strategy} x {s.processes} GPU(s), {'bf16 compute + fp32 master' if s.bf16 else 'fp32'}"
            f"{', activation checkpointing' if s.activation_checkpointing else ''}"
            f"{', LoRA' if s.lora_params else ''}; micro-batch {s.micro_batch} x {s.seq_len} tokens"
        )
        out = [head]
        out += [f"  {k:<18} {v / GiB:8.2f} GiB" for k, v in self.items.items()]
        verdict = ""
        if gpu_gb:
            verdict = " fits" if self.fits(gpu_gb) else " DOES NOT FIT"
            verdict += f" in {gpu_gb:g} GiB"
        out.append(f"  {'total per GPU':<18} {self.total / GiB:8.2f} GiB{verdict}")
        return out


def plan_memory(shape: ModelShape, s: TrainSetup) -> MemoryPlan:
    """The per-GPU plan of training ``shape`` as ``s`` says (pure; see the module docstring)."""
    if s.processes < 1 or s.micro_batch < 1:
        raise ValueError("processes and micro_batch must be >= 1")
    P = shape.num_params
    shard = s.processes if s.strategy == "fsdp" else 1
    cb = 2 if s.bf16 else 4  # compute dtype bytes
    trained = s.lora_params or P
    items: dict[str, float] = {}
    items["master weights"] = 4 * P / shard + (4 * s.lora_params if s.lora_params else 0)
    if s.bf16:
        # fsdp: the unit being computed and the next one, gathered in bf16; ddp: autocast's cache
        items["compute copy"] = 2 * 2 * shape.largest_unit if s.strategy == "fsdp" else 2 * P
    items["gradients"] = 4 * trained / (shard if not s.lora_params else 1)
    items["optimizer"] = 8 * trained / (shard if not s.lora_params else 1)
    tokens = s.micro_batch * s.seq_len
    h, i = shape.hidden, shape.intermediate
    per_layer = tokens * (8 * h + 4 * i) * cb
    if s.activation_checkpointing:
        act = shape.layers * tokens * h * cb + per_layer
    else:
        act = shape.layers * per_layer
    head = 2 * s.chunk * shape.vocab * 4 + tokens * h * 4  # chunk buffers + saved hidden (fp32)
    if s.bf16:
        head += shape.vocab * h * 4  # the fp32 copy of a bf16 head weight
    items["activations"] = act + head
    if s.reference:
        items["reference model"] = cb * P / shard
    if s.rollout_rows:
        # the engine runs in the dtype of the weights it reads: fsdp's gathered compute copy,
        # ddp's fp32 master weights (autocast does not reach it)
        eb = cb if s.strategy == "fsdp" else 4
        kv = s.rollout_rows * s.rollout_len * shape.kv_bytes_per_token(eb)
        weights = eb * P  # the engine's packed copy of the layers
        if s.strategy == "fsdp":
            weights += eb * P  # the whole model gathered for it (full_weights)
        items["rollout KV cache"] = kv
        items["rollout weights"] = weights
    items["reserve"] = RESERVE_GB * GiB
    return MemoryPlan(setup=s, items=items)


def lora_params(shape: ModelShape, r: int, target_modules: tuple[str, ...]) -> int:
    """Trainable parameters of LoRA rank ``r`` on the named projections of every decoder layer."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    dims = {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }  # fmt: skip
    per_layer = sum(r * (dims[m][0] + dims[m][1]) for m in target_modules if m in dims)
    return shape.layers * per_layer


def study_setups(cfg: Any, steps: list[Any], shape: ModelShape) -> list[tuple[list[str], TrainSetup]]:
    """The distinct training setups of a study's plan: ([step names], setup), in plan order.

    Sequence length of every stage: the GRPO table's ``max_prompt_tokens`` plus the stage's
    ``max_new_tokens`` (the longest row it trains on or decodes).
    """
    run, rollout = cfg.run, cfg.rollout
    local = rollout.backend == "local"
    prompt = cfg.grpo.max_prompt_tokens
    lora = lora_params(shape, run.lora.r, tuple(run.lora.target_modules)) if run.lora else 0
    found: dict[TrainSetup, list[str]] = {}
    for s in steps:
        if s.kind == "stage1":
            c, method = s.job.config, s.job.method
        elif s.kind == "grpo":
            c, method = s.job, "grpo"
        else:
            continue
        if method == "sft":
            rows = 64  # greedy validation decodes in batches of 64 problems
        else:
            rows = c.prompts_per_step * c.n
        setup = TrainSetup(
            name=s.kind if s.kind == "grpo" else f"stage1 {method}",
            strategy=run.strategy,
            processes=run.processes,
            bf16=c.optim.dtype == "bfloat16",
            activation_checkpointing=run.activation_checkpointing,
            micro_batch=c.micro_batch,
            seq_len=prompt + c.max_new_tokens,
            lora_params=lora,
            reference=method == "grpo" and c.loss.kl_coef > 0,
            rollout_rows=(min(rows, rollout.max_batch_rows) if rollout.max_batch_rows else rows)
            if local
            else 0,
            rollout_len=prompt + c.max_new_tokens,
        )
        found.setdefault(setup, []).append(s.name)
    return [(names, setup) for setup, names in found.items()]
