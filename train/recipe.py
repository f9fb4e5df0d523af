"""One typed training config (the phi-1.5 recipe by default) and the DeepSpeed config built from it.

phi-1.5 (arXiv 2309.05463, sec. 2.3): Adam with momentum (0.9, 0.98) and epsilon 1e-7, constant learning
rate 2e-4 with no warm-up needed, weight decay 0.1, DeepSpeed ZeRO stage 2 in fp16, batch size 2048 sequences
of 2048 tokens, 150 B tokens in all (about 36 k steps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp16", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    data: Path  # mixture file (train/mixture.py)
    out: Path
    preset: str | None = None  # the model shape of a new model (train/config.py)
    init_from: Path | None = None  # or: start from this checkpoint's weights and shape (fine-tuning)
    tokenizer: Path | None = None  # default: the init_from checkpoint's, else tokenizer.json beside the mixture
    seq_len: int | None = None  # default: the preset's max_position_embeddings
    global_batch: int = 2048  # sequences per optimizer step, over all ranks
    micro_batch: int = 8  # sequences per rank per forward pass
    grad_accum: int | None = None  # default: global_batch / (micro_batch x world size)
    max_steps: int = 36_000  # 150 B tokens / (2048 x 2048) per step
    lr: float = 2e-4
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-7
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"  # auto: fp16 on GPU (as in the report), bf16 on CPU (DeepSpeed refuses fp16 there)
    zero_stage: int = 2
    activation_checkpointing: bool = False
    attention: str = "auto"  # flash-attn on CUDA when installed, torch SDPA otherwise
    seed: int = 1234
    save_dtype: str = "fp32"  # precision of the Hugging Face checkpoints (fp16 halves them)
    save_every: int = 500
    keep: int = 3  # Hugging Face checkpoints kept (the newest); DeepSpeed states keep the newest 2
    eval_every: int = 250
    eval_tokens: int = 2**20  # held-out tokens per evaluation
    log_every: int = 10
    resume: bool = False
    universal_checkpoint: bool = False  # resume from OUT/deepspeed/TAG-universal (another world size)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed config (expert use)

    def __post_init__(self) -> None:
        if (self.preset is None) == (self.init_from is None):
            raise ValueError("pass --preset NAME for a new model or --init-from CHECKPOINT to fine-tune one (not both)")
        for name in ("global_batch", "micro_batch", "max_steps", "save_every", "eval_every", "log_every",
                     "eval_tokens", "keep"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"--seq-len must be at least 2, got {self.seq_len}")
        if self.grad_accum is not None and self.grad_accum <= 0:
            raise ValueError(f"--grad-accum must be positive, got {self.grad_accum}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
        if self.save_dtype not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"--save-dtype {self.save_dtype!r} is unknown; choose fp32, fp16 or bf16")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stage must be 0..3, got {self.zero_stage}")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps; global batch = micro batch x accumulation x world size, checked."""
        per_step = self.micro_batch * world_size
        accum = self.grad_accum if self.grad_accum is not None else self.global_batch // per_step
        if accum < 1 or self.micro_batch * accum * world_size != self.global_batch:
            raise ValueError(
                f"global batch {self.global_batch} != micro batch {self.micro_batch} x gradient accumulation "
                f"{self.grad_accum if self.grad_accum is not None else accum} x world size {world_size}; "
                f"choose --global-batch as a multiple of {per_step} or change --micro-batch")
        return accum

    def resolved_precision(self, cuda: bool) -> str:
        if self.precision == "auto":
            return "fp16" if cuda else "bf16"
        if self.precision == "fp16" and not cuda:
            raise ValueError("--precision fp16 needs a GPU: DeepSpeed refuses fp16 on CPU; use bf16 or fp32")
        return self.precision

    def optimizer_params(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def deepspeed_config(self, world_size: int, cuda: bool) -> dict[str, Any]:
        """On a GPU DeepSpeed builds its fused AdamW from the "optimizer" entry. On a CPU the trainer passes
        torch's AdamW instead (no "optimizer" entry): DeepSpeed's CPU Adam recomputes beta^t differently in a
        new process, so a resumed run would drift from an uninterrupted one; torch's resumes bit for bit."""
        precision = self.resolved_precision(cuda)
        config: dict[str, Any] = {
            "train_batch_size": self.global_batch,
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.accumulation(world_size),
            "optimizer": {"type": "AdamW", "params": self.optimizer_params()},
            "gradient_clipping": self.grad_clip,
            "zero_optimization": {"stage": self.zero_stage, "overlap_comm": cuda, "contiguous_gradients": True,
                                  "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
            "fp16": {"enabled": precision == "fp16", "loss_scale": 0,  # 0 = dynamic loss scaling
                     "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
            "bf16": {"enabled": precision == "bf16"},
            "steps_per_print": 10**9,  # progress goes through our own tqdm bar and JSON-lines log
            "wall_clock_breakdown": False,
        }
        if self.warmup_steps:
            config["scheduler"] = {"type": "WarmupLR", "params": {
                "warmup_min_lr": 0.0, "warmup_max_lr": self.lr, "warmup_num_steps": self.warmup_steps,
                "warmup_type": "linear"}}
        if not cuda:
            del config["optimizer"]
            config["zero_allow_untested_optimizer"] = True  # torch.optim.AdamW (see above)
        config.update(self.extra)
        return config

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
