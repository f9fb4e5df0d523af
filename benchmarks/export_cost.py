"""python -m benchmarks.export_cost [--checkpoint DIR] [--precision int4 ...]: export wall time and peak RSS.

Without --checkpoint it creates (once, cached) a random-weight phi-1.5-size checkpoint with transformers'
PhiForCausalLM, stored in fp16 like the published one, since published weights cannot be downloaded here.
Each export runs in a fresh process whose own peak RSS (getrusage) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("PHI_EDGE_CACHE", Path.home() / ".cache" / "phi-edge"))

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from export.options import ExportOptions
from export.package import export_package
ckpt, out, opts = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
t = time.perf_counter()
export_package(ckpt, out, ExportOptions(**opts), force=True, show_progress=False)
seconds = time.perf_counter() - t
size = sum(f.stat().st_size for f in out.iterdir())
print(json.dumps({"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "package_bytes": size}))
"""


def random_checkpoint(preset_name: str = "phi-1_5") -> Path:
    """A random-weight checkpoint of a published shape, made by the reference implementation (cached)."""
    folder = CACHE / f"random-{preset_name}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    from train.config import preset

    config = preset(preset_name)
    # The stand-in tokenizer's <|endoftext|> (id 0) ends text (see below); export refuses an id it lacks.
    config = config.replace(bos_token_id=0, eos_token_id=0, **({"pad_token_id": 0} if config.model_type == "phi3" else {}))
    torch.manual_seed(0)
    classes = {"phi": (transformers.PhiConfig, transformers.PhiForCausalLM),
               "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}[config.model_type]
    hf_config = classes[0](**config.to_hf_dict())
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # built in fp16: a 3.8 B model in fp32 would need 15 GB here
    try:
        model = classes[1](hf_config).to(torch.float16)
    finally:
        torch.set_default_dtype(default)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    del model
    # Exporters want a tokenizer beside the weights; the demo's byte-level BPE (GPT-2 pre-tokenizer, 4096 ids)
    # stands in for phi's 50k one, which cannot be downloaded here. Speed figures run on token ids only.
    shutil.copyfile(Path(__file__).resolve().parents[1] / "train" / "demo" / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "model_max_length": config.max_position_embeddings}))
    os.replace(tmp, folder)
    return folder


def measure(checkpoint: Path, options: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(checkpoint), str(Path(tmp) / "pkg"),
                               json.dumps(options)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a random one of --preset's shape")
    parser.add_argument("--preset", default="phi-1_5", help="shape of the random checkpoint (default: phi-1_5)")
    parser.add_argument("--precision", nargs="+", default=["int4", "int8", "fp16", "fp32"])
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or random_checkpoint(args.preset)
    rows = []
    for precision in args.precision:
        result = measure(checkpoint, {"precision": precision, "block_size": args.block_size})
        rows.append({"precision": precision, "block_size": args.block_size, **result})
        print(f"{precision:5s} block {args.block_size}: {result['seconds']:6.1f} s, peak RSS "
              f"{result['peak_rss_bytes'] / 2**30:.2f} GiB, package {result['package_bytes'] / 2**30:.2f} GiB",
              flush=True)
    report = {"checkpoint": str(checkpoint), "machine": {"cpu": platform.processor() or platform.machine(),
                                                          "cores": os.cpu_count()}, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
