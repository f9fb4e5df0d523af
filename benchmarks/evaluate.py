"""LM-Eval Harness on a model package (our adapter, through the runtime) or on a checkpoint (the harness's own HF
path), so the phi-1.5 report's tasks run on a quantized package exactly as on the checkpoint it came from.

    python -m benchmarks.evaluate --package runtime/demo --tasks arc_easy,piqa --limit 200
    python -m benchmarks.evaluate --checkpoint train/demo --tasks arc_easy,piqa --limit 200
    python -m benchmarks.evaluate --package out/pkg --tasks my_task --include-path tasks/   # local task YAMLs
    python -m benchmarks.evaluate --package runtime/demo --tasks stdlib_next_line   # offline (benchmarks/localtasks.py)

The report's list (zero-shot unless noted): winogrande, arc_easy, arc_challenge, boolq, siqa, piqa, hellaswag,
openbookqa, mmlu (--num-fewshot 2), squadv2, gsm8k, humaneval, mbpp; the harness downloads their data from the
Hugging Face hub, so on a machine without hub access only local tasks (dataset_path: json) run.

PackageLM scores a request's continuations on one KV cache: the context is prefilled once, and each continuation
is appended (one verify-style step returning a logits row per token) and truncated away again. Tokenization
follows the harness (TemplateLM._encode_pair: trailing context spaces move to the continuation, the pair is
encoded whole and split), so its loglikelihoods equal the HF model's for an fp32 package.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from .perplexity import log_softmax


class PackageLM(TemplateLM):
    """lm-eval's model interface over a phi-edge package (runtime.load)."""

    def __init__(self, package: str | Path, threads: int | None = None):
        super().__init__()
        import runtime
        from runtime.engine import EngineOptions

        options = EngineOptions() if threads is None else EngineOptions(threads=threads)
        self.model = runtime.load(Path(package), options)
        self.backend = self.model.backend
        self.capacity = self.backend.capacity
        eos = self.model.stop_token_ids
        if not eos:
            raise ValueError(f"{package} names no end-of-text token, which the harness needs as the prefix of an "
                             f"empty context; re-export it with eos_token_id set")
        self._eot = int(eos[0])

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def max_length(self) -> int:
        return self.capacity

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.model.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.model.decode(tokens)

    def _rows(self, context: list[int], continuation: list[int], cached: list[int] | None,
              last_row: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Logits predicting each continuation token; the context's last row (reused while the context is)."""
        if context != cached:
            self.backend.truncate(0)
            last_row = self.backend.step(context)
        else:
            self.backend.truncate(len(context))
        if len(continuation) == 1:
            return last_row[None], last_row
        if getattr(self.backend, "can_step_all", False):
            rows = self.backend.step_all(continuation[:-1])
        else:  # a format-1 package: one row per step
            rows = np.stack([self.backend.step([t]) for t in continuation[:-1]])
        return np.vstack([last_row[None], rows]), last_row

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (requests[i][1], len(requests[i][2])))  # same contexts adjacent
        cached, last_row = None, None
        for i in tqdm(order, desc="loglikelihood", disable=disable_tqdm, file=sys.stderr):
            _, context, continuation = requests[i]
            # The last continuation token is scored, never fed: context + continuation may hold capacity + 1
            # tokens, as the harness's HF model truncates (context + continuation)[-(max_length + 1):][:-1].
            continuation = continuation[-self.capacity:]
            context = context[-(self.capacity + 1 - len(continuation)):]
            logits, last_row = self._rows(list(context), list(continuation), cached, last_row)
            cached = list(context)
            logp = log_softmax(logits.astype(np.float64))
            cont = np.asarray(continuation)
            ll = float(logp[np.arange(len(cont)), cont].sum())
            greedy = bool((logits.argmax(axis=-1) == cont).all())
            out[i] = (ll, greedy)
            self.backend.truncate(len(context))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for (string,) in tqdm([r.args for r in requests], desc="rolling", disable=disable_tqdm, file=sys.stderr):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.capacity,
                context_len=1)]
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            out.append(sum(ll for ll, _ in scored))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from runtime.loop import GenerationConfig
        from runtime.sampling import SamplingConfig

        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], desc="generate", disable=disable_tqdm,
                                        file=sys.stderr):
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-(self.capacity - max_new):] if max_new < self.capacity else []
            ids = ids or [self.prefix_token_id]
            max_new = min(max_new, self.capacity - len(ids))
            temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample") else 0.0
            config = GenerationConfig(max_new_tokens=max_new, stop=tuple(until),
                                      sampling=SamplingConfig(temperature=temperature, top_p=1.0, seed=0))
            self.backend.truncate(0)
            out.append(self.model.generate_ids(ids, config).text)
        return out


def checkpoint_lm(checkpoint: Path, batch_size: int = 1):
    """The harness's own HFLM over a checkpoint folder (config.json, model.safetensors, tokenizer.json)."""
    import transformers
    from lm_eval.models.huggingface import HFLM

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} has no config.json; pass a checkpoint folder (HF layout)")
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype="float32").eval()
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else 0  # phi-1.5 ships null
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"))
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos[0] if isinstance(eos, list) else eos))
    return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, device="cpu")


def evaluate(lm, tasks: list[str], include_path: Path | None = None, limit: float | None = None,
             num_fewshot: int | None = None, log_samples: bool = False) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=log_samples, bootstrap_iters=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--package", type=Path, help="a phi-edge model package")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint folder, through lm-eval's HF model")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", type=Path, help="a folder of task YAMLs (local data: dataset_path json)")
    p.add_argument("--limit", type=float, help="documents per task (a fraction if < 1)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--threads", type=int, help="onnxruntime threads for --package (default: the runtime's)")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    args = p.parse_args(argv)
    tasks = args.tasks.split(",")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            include = args.include_path
            if "stdlib_next_line" in tasks and include is None:  # the offline task, made from the demo corpus
                from .localtasks import demo_task

                include, _ = demo_task(Path(tmp))
            lm = PackageLM(args.package, args.threads) if args.package else checkpoint_lm(args.checkpoint)
            results = evaluate(lm, tasks, include, args.limit, args.num_fewshot)
    except (ValueError, OSError, KeyError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    table = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
             for task, metrics in results["results"].items()}
    print(json.dumps(table, indent=1))
    if args.out:
        from runtime import files as atomic

        atomic.write_text(args.out, json.dumps({"model": str(args.package or args.checkpoint), "results": table},
                                               indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
