"""The training loop: DeepSpeed ZeRO over the phi model, checkpoints that resume exactly, held-out evaluation.

Output folder:

    OUT/train_config.json        the TrainConfig and model config of the run
    OUT/log.jsonl                one JSON object per logged step and per evaluation
    OUT/deepspeed/step-NNNNNNNN/ DeepSpeed state (fp32 master weights, optimizer, sampler in client state)
    OUT/checkpoints/step-NNNNNNNN/ Hugging Face layout: config.json, model.safetensors, tokenizer.json,
                                 trainer_state.json (what export/ consumes)
    OUT/latest                   the tag of the last checkpoint written completely; --resume starts there
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime import files

from . import run_dir
from .architectures import build_model
from .attention import check_backend
from .checkpoint import load_pretrained, read_config, save_pretrained
from .config import PhiConfig, preset
from .data import load_source
from .mixture import MixtureSampler, heldout_batches, load_mixture, load_sources
from .recipe import TrainConfig
from .states import weights_only_loads

def _tokenizer_path(cfg: TrainConfig) -> Path:
    own = cfg.init_from / "tokenizer.json" if cfg.init_from is not None else None
    path = cfg.tokenizer or (own if own is not None and own.is_file() else cfg.data.parent / "tokenizer.json")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} not found; pass --tokenizer, or build the data with "
                                f"python -m train.data, which writes tokenizer.json beside the mixture")
    return path


def model_config(cfg: TrainConfig, sources) -> PhiConfig:
    """The preset's shape with the data's end-of-text id, or the fine-tuned checkpoint's own config."""
    config = read_config(cfg.init_from) if cfg.init_from is not None else preset(cfg.preset)
    what = f"checkpoint {cfg.init_from}" if cfg.init_from is not None else f"preset {cfg.preset!r}"
    vocab = max(s.info.vocab_size for s in sources)
    if vocab > config.vocab_size:
        raise ValueError(f"the data's tokenizer has {vocab} tokens but {what} has only {config.vocab_size} "
                         f"embedding rows; tokenize the data with the model's own tokenizer")
    if cfg.init_from is not None:
        return config
    eos = sources[0].info.eos_id
    return config.replace(bos_token_id=eos, eos_token_id=eos)


def _init_distributed(cuda: bool) -> tuple[int, int]:
    import deepspeed

    if "RANK" not in os.environ:  # a plain `python -m train` run: one process, no launcher
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, LayerNorms (1-D) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: torch.nn.Module, sources, seq_len: int, max_tokens: int, device) -> float:
    """Mean held-out loss (nats per token) over the first max_tokens of each held-out source."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for source in sources:
        for rows in heldout_batches(source, seq_len, max_tokens):
            rows = torch.from_numpy(rows).to(device)
            logits = model(rows[:, :-1])
            total += _loss(logits, rows[:, 1:]).item() * rows[:, 1:].numel()
            count += rows[:, 1:].numel()
    model.train(was_training)
    return total / count


def _full_fp32_state(engine, rank: int) -> dict[str, torch.Tensor]:
    """The fp32 master weights, gathered parameter by parameter (a collective: every rank calls it); only rank
    0 keeps them, so the other ranks never hold more than one parameter's full copy."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p)
        if rank == 0:
            state[name] = (full if full is not None else p).detach().float().cpu()
        del full
    return state


def _save(engine, cfg: TrainConfig, config: PhiConfig, tokenizer: Path, step: int, sampler,
          trainer_state: dict, rank: int) -> None:
    tag = run_dir.tag(step)
    client = {"step": step, "sampler": sampler.state_dict(), "trainer": trainer_state}
    engine.save_checkpoint(str(cfg.out / "deepspeed"), tag=tag, client_state=client, save_latest=False)
    state = _full_fp32_state(engine, rank)
    if rank == 0:
        with torch.device("meta"):
            model = build_model(config)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        folder = save_pretrained(model, cfg.out / "checkpoints" / tag, dtype=cfg.save_dtype, tokenizer=tokenizer)
        (folder / "trainer_state.json").write_text(json.dumps(
            dict(trainer_state, step=step, sampler=client["sampler"]), indent=2) + "\n")
        files.write_text(cfg.out / run_dir.LATEST, tag + "\n")  # the checkpoint counts once both parts are complete
        run_dir.prune(cfg.out / "deepspeed", run_dir.KEEP_DEEPSPEED_STATES)
        run_dir.prune(cfg.out / "checkpoints", cfg.keep)
    torch.distributed.barrier()


def train(cfg: TrainConfig) -> Path:
    """Runs (or resumes) training; returns the folder of the last Hugging Face checkpoint.

    Every input is checked before anything is written or DeepSpeed is imported.
    """
    mixture = load_mixture(cfg.data)
    sources = load_sources(mixture)
    heldout = [load_source(h.path) for h in mixture.heldout]
    tokenizer = _tokenizer_path(cfg)
    config = model_config(cfg, sources)
    seq_len = cfg.seq_len or config.max_position_embeddings
    if seq_len > config.max_position_embeddings:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's context ({config.max_position_embeddings})")
    run_dir.check_tokenizer(tokenizer, [*sources, *heldout])
    resume_tag = run_dir.prepare(cfg.out, cfg.resume)
    if resume_tag is not None:
        run_dir.check_resume_options(cfg.out, cfg.to_json(), config.to_hf_dict())
    cuda = torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds_config = cfg.deepspeed_config(world_size, cuda)  # checks batch sizes early
    check_backend(cfg.attention, cuda, cfg.resolved_precision(cuda))
    load_tag = resume_tag
    if resume_tag is not None and cfg.universal_checkpoint:
        load_tag = f"{resume_tag}-universal"
        if not (cfg.out / "deepspeed" / load_tag).is_dir():
            raise ValueError(f"--universal-checkpoint: {cfg.out / 'deepspeed' / load_tag} does not exist; convert "
                             f"the state first: {run_dir.UNIVERSAL_HOWTO.format(state=cfg.out / 'deepspeed' / resume_tag)}")
        ds_config["checkpoint"] = {"load_universal": True}
    elif resume_tag is not None:
        run_dir.check_world_size(cfg.out, resume_tag, world_size)
    sampler = MixtureSampler(sources, mixture.weights, seq_len, cfg.seed)

    import deepspeed

    rank, world = _init_distributed(cuda)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(config)
    if cfg.init_from is not None and resume_tag is None:  # fine-tuning starts from the checkpoint's weights
        model.load_state_dict(load_pretrained(cfg.init_from).state_dict())
    model.set_attention_backend(cfg.attention)
    model.set_gradient_checkpointing(cfg.activation_checkpointing)
    # Saved with every state, so DeepSpeed's ds_to_universal can convert it (resuming on another world size).
    from deepspeed.checkpoint import constants

    model.universal_checkpoint_info = {constants.UNIVERSAL_CHECKPOINT_VERSION_KEY:
                                       constants.UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    groups = _param_groups(model, cfg.weight_decay)
    optimizer = None
    if "optimizer" not in ds_config:  # on a CPU: torch's AdamW, which resumes bit for bit (train/recipe.py)
        params = cfg.optimizer_params()
        optimizer = torch.optim.AdamW(groups, lr=params["lr"], betas=tuple(params["betas"]), eps=params["eps"])
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           model_parameters=None if optimizer else groups, config=ds_config)
    step, trainer_state = 0, {"tokens": 0, "train_seconds": 0.0, "skipped_steps": 0}
    if resume_tag is not None:
        with weights_only_loads(cfg.out / "deepspeed" / load_tag):  # a planted state cannot run code (train/states.py)
            _, client = engine.load_checkpoint(str(cfg.out / "deepspeed"), tag=load_tag)
        if client is None:
            raise ValueError(f"DeepSpeed could not load the state {cfg.out / 'deepspeed' / load_tag}; it is "
                             f"incomplete, resume from an earlier one by writing its tag into {cfg.out / 'latest'}")
        step, trainer_state = client["step"], client["trainer"]
        sampler.load_state_dict(client["sampler"])
        if rank == 0:
            run_dir.truncate_log(cfg.out / "log.jsonl", step)
    elif rank == 0:
        (cfg.out / "train_config.json").write_text(json.dumps(
            {"train": cfg.to_json(), "model": config.to_hf_dict(), "deepspeed": ds_config,
             "optimizer": {"type": "torch.optim.AdamW" if optimizer else "DeepSpeed AdamW",
                           "params": cfg.optimizer_params()}}, indent=2) + "\n")

    micro, accum = cfg.micro_batch, ds_config["gradient_accumulation_steps"]
    mine = slice(rank * micro * accum, (rank + 1) * micro * accum)  # this rank's rows of each global batch
    log = open(cfg.out / "log.jsonl", "a") if rank == 0 else nullcontext()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=rank != 0, unit="step", dynamic_ncols=True)
    last_eval = None
    with log:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            rows = torch.from_numpy(sampler.next_batch(cfg.global_batch)[mine]).to(engine.device)
            losses = []
            skipped = engine.skipped_steps
            for chunk in rows.split(micro):  # (micro, T + 1)
                loss = _loss(engine(chunk[:, :-1]), chunk[:, 1:])
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
            step += 1
            seconds = time.perf_counter() - t0
            tokens = cfg.global_batch * seq_len
            trainer_state["tokens"] += tokens
            trainer_state["train_seconds"] += seconds
            # fp16: a step whose gradients overflowed is skipped by DeepSpeed (weights unchanged, scale lowered)
            step_skipped = engine.skipped_steps > skipped
            trainer_state["skipped_steps"] = trainer_state.get("skipped_steps", 0) + int(step_skipped)
            train_loss = _mean_over_ranks(float(np.mean(losses)), engine.device, world)
            lr = engine.get_lr()[0]
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens / seconds:,.0f}", lr=f"{lr:.1e}")
            bar.update()
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
                log.write(json.dumps({"step": step, "loss": round(train_loss, 5), "lr": lr,
                                      "tokens": trainer_state["tokens"], "tokens_per_s": round(tokens / seconds),
                                      "loss_scale": _loss_scale(engine), "skipped": step_skipped,
                                      "skipped_steps": trainer_state["skipped_steps"]}) + "\n")
                log.flush()
            if heldout and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                last_eval = evaluate(engine.module, heldout, seq_len, cfg.eval_tokens, engine.device)
                trainer_state.update(heldout_loss=last_eval, heldout_ppl=math.exp(last_eval), heldout_step=step)
                if rank == 0:
                    bar.write(f"step {step}: held-out loss {last_eval:.4f}, perplexity {math.exp(last_eval):.2f}")
                    log.write(json.dumps({"step": step, "heldout_loss": round(last_eval, 5),
                                          "heldout_ppl": round(math.exp(last_eval), 3)}) + "\n")
                    log.flush()
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                _save(engine, cfg, config, tokenizer, step, sampler, trainer_state, rank)
    bar.close()
    return cfg.out / "checkpoints" / run_dir.tag(step)


def _mean_over_ranks(value: float, device, world: int) -> float:
    """The mean of a per-rank number over all ranks (each rank trains on different rows of the batch)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


def _loss_scale(engine) -> float | None:
    scale = getattr(engine.optimizer, "cur_scale", None)
    return float(scale) if scale is not None else None
