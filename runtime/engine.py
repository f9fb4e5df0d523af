"""ONNX Runtime backend: one session, one KV cache that grows with the sequence (runtime/kvcache.py), one step.

Each step binds (runtime/contract.py has the names):

    input_ids        int64 (1, S)                   the new tokens
    attention_mask   int64 (1, P + S)               ones; P = positions already in the cache
    past_key_values.L.key / .value  and  present.L.key / .value
                     the SAME OrtValue (1, kv_heads, allocated, kv_width) per pair: GroupQueryAttention
                     writes positions [P, P + S) in place; when P + S outgrows the buffers they are
                     reallocated (at least doubled, up to the planned context) and rebound; a
                     sliding-window package's is allocated once, window + EVICT positions, and the graph
                     evicts within it (runtime/contract.py)
    logits_to_keep   int64 (1,)                     "last" packages of format 2: K rows of logits, 1 or S
    logits           float32 (1, K, vocab) ("last" packages) or (1, S, vocab) ("all")

Weights stay in model.onnx.data; ONNX Runtime memory-maps external initializers that start on a page
boundary (export aligns them to 4096 bytes) on its own, so there is no session key to set for it in 1.32. Once
the session is built, the mapped pages its packing read are handed back (runtime/pages.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from .contract import ATTENTION_MASK, INPUT_IDS, KV_KINDS, LOGITS, LOGITS_TO_KEEP
from .graphinfo import rotary_length
from .kvcache import SHORT, KvCache, available_memory, plan_context, step_rows, window_buffer
from .loop import GenerationConfig
from .manifest import MANIFEST, MODEL, Manifest
from .pages import release
from .threads import auto_threads, usable_cores

PROFILES = ("latency", "low-power")  # latency: worker threads spin between ops; low-power: they sleep
_LOAD_ERRORS = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile,
                ort_errors.InvalidArgument, ort_errors.NotImplemented, ort_errors.RuntimeException)


@dataclass(frozen=True)
class EngineOptions:
    threads: int | None = None  # intra-op threads; None: measured on this device (runtime/threads.py); 0: ORT's
    # own default (one per core)
    # latency: worker threads spin briefly between ops (ONNX Runtime's default, as the peers run); measured on a
    # phi-1.5-size int4 package, 2 threads, it was both faster and cheaper in CPU time than low-power (block 128:
    # 32.3 vs 24.8 tok/s, 61.5 vs 74.7 CPU ms/token; benchmarks/RESULTS.md). low-power (threads sleep) is for
    # devices where spinning competes with other work: it won on a 2-core machine busy with other jobs.
    profile: str = "latency"
    context: int | None = None  # most KV cache positions held; None: the package's max_length, capped to what the
    # machine's free memory holds (runtime/kvcache.py plan_context). The cache grows to it with use.
    verify: bool = False  # check every file's sha256 against the manifest before loading

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 0):
            raise ValueError(f"threads must be an integer >= 0 (0: one per core), got {self.threads!r}")
        if self.threads is not None and self.threads > usable_cores():
            raise ValueError(f"--threads {self.threads} is more than the {usable_cores()} cores this process may "
                             f"run on; pass at most {usable_cores()} (0: one per core)")
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is unknown; choose one of {', '.join(PROFILES)}")
        if self.context is not None and (isinstance(self.context, bool) or not isinstance(self.context, int)
                                         or self.context < 1):
            raise ValueError(f"context must be an integer >= 1 (positions), got {self.context!r}")
        if not isinstance(self.verify, bool):
            raise ValueError(f"verify must be True or False, got {self.verify!r}")


def session_options(options: EngineOptions, threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # the graph is a chain; parallel mode only adds threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # fatal only: errors reach the user once, as our exception's one line
    spin = "1" if options.profile == "latency" else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


_ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "float16": "tensor(float16)",
              "int8": "tensor(int8)", "uint8": "tensor(uint8)"}
_KV_AXES = {1: "io.kv_cache.kv_heads", 3: "io.kv_cache.head_dim"}


def _field(name: str, axis: int | None) -> str:
    """The manifest field that fixes input/output `name`'s dtype (axis None) or the size of `axis`."""
    if name == LOGITS:
        return "model.vocab_size" if axis == 2 else "io.logits"
    if name.endswith(tuple(f".{k}" for k in KV_KINDS)):
        return "io.kv_cache.dtype" if axis is None else _KV_AXES.get(axis, "io.kv_cache.layout")
    return f"io.inputs.{name}"


class OrtBackend:
    """runtime.backend.Backend on a model package; not thread-safe (one sequence, one caller)."""

    def __init__(self, manifest: Manifest, options: EngineOptions = EngineOptions()):
        self.manifest, self.options = manifest, options
        contract = self.contract = manifest.contract
        rows = 64 if contract.logits == "all" else 1 + GenerationConfig().draft_tokens  # logits rows a step may ask for, to plan
        self.plan = plan_context(manifest, options.context, available_memory(), rows)
        path = Path(manifest.folder) / MODEL
        manifest.check_onnxruntime(ort.__version__)
        try:
            self.threads = options.threads if options.threads is not None else auto_threads(manifest, options.profile)
            self.session = ort.InferenceSession(str(path), session_options(options, self.threads),
                                                providers=["CPUExecutionProvider"])
        except _LOAD_ERRORS as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"ONNX Runtime cannot load {path}: {first}; the package may be corrupt (check it with "
                             f"--verify) or need a newer onnxruntime than {ort.__version__}") from None
        self._check_graph()
        for name in manifest.files:  # the mapped weights ONNX Runtime read while packing (runtime/pages.py)
            if name.startswith(MODEL + "."):
                release(Path(manifest.folder) / name)
        self._capacity = self.plan.context
        self._length = 0
        # A sliding-window package's buffer: allocated whole on the first step, evicted within by the graph
        self.window_buffer = window_buffer(contract.window, self._capacity)
        self.kv = KvCache(contract, self.window_buffer or self._capacity)  # allocated on the first step
        self._heads = int(manifest.model.get("num_attention_heads") or contract.kv_heads)  # query heads: scratch
        self._mask = np.ones((1, self._capacity), np.int64)  # a step's is its first P + S (the sequence's own)
        self._logits_rows = np.empty((1, 1, contract.vocab_size), np.float32)  # grown to the longest step
        self._logits_bound: tuple[int, ort.OrtValue] | None = None  # (rows, OrtValue over them)
        self._last = np.empty((1, 0, contract.vocab_size), np.float32)
        self._keep = np.ones(1, np.int64)  # logits_to_keep
        self._one = np.zeros((1, 1), np.int64)  # a decode step's input_ids, written in place
        self._one_value = ort.OrtValue.ortvalue_from_numpy(self._one)  # over the array's memory, not a copy
        self._keep_value = ort.OrtValue.ortvalue_from_numpy(self._keep)
        self._bound: dict[str, object] = {}  # name -> what is bound now, for what a step need not bind again
        self.binding = self.session.io_binding()

    def _reserve(self, needed: int) -> None:
        """Room for `needed` positions: the cache grown and rebound when it is too small. The binding lets go of
        the old buffers first (the other inputs and outputs are bound at every step anyway), so each is freed as
        soon as its replacement holds its positions: growing holds one extra layer's buffer, not a second cache."""
        if self.window_buffer is not None:
            needed = self.window_buffer  # whole from the first step: GroupQueryAttention refuses less
        if needed <= self.kv.capacity:
            return
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self._bound.clear()
        self.kv.reserve(needed, self._length)
        for (past, present), buffer in zip(self.contract.kv_names(), self.kv.values):
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)

    def _check_graph(self) -> None:
        """The graph is the one the manifest describes: I/O names, dtypes and fixed dims, and rotary tables that
        cover max_length. Each mismatch is one line naming the manifest's field."""
        path = self.manifest.folder / MODEL
        got = {i.name: i for i in self.session.get_inputs() + self.session.get_outputs()}
        specs = self.contract.inputs() + self.contract.outputs()
        want = {t.name for t in specs}
        if set(got) != want:
            raise ValueError(f"{path} does not match its manifest's I/O contract (missing "
                             f"{sorted(want - set(got))}, unexpected {sorted(set(got) - want)}); re-export the package")
        fix = "the manifest does not describe this model.onnx; re-export the package"
        for spec in specs:
            arg = got[spec.name]
            if arg.type != _ORT_TYPES[spec.dtype]:
                raise ValueError(f"{self.manifest.folder / MANIFEST}: field {_field(spec.name, None)!r} says "
                                 f"{spec.dtype} but the graph's {spec.name} is {arg.type}; {fix}")
            shape = list(arg.shape or [])
            if len(shape) != len(spec.shape):
                raise ValueError(f"{path}: {spec.name} has {len(shape)} dimensions, the manifest's contract "
                                 f"{len(spec.shape)}; {fix}")
            for axis, (have, need) in enumerate(zip(shape, spec.shape)):
                if isinstance(have, int) and isinstance(need, int) and have != need:
                    raise ValueError(f"{self.manifest.folder / MANIFEST}: field {_field(spec.name, axis)!r} is "
                                     f"{need} but the graph's {spec.name} has {have} there; {fix}")
        rows = rotary_length(path)
        if rows is not None and rows < self.manifest.max_length:
            raise ValueError(f"{self.manifest.folder / MANIFEST}: field 'max_length' is {self.manifest.max_length} "
                             f"but the graph's rotary tables cover {rows} positions; set max_length to at most "
                             f"{rows} or re-export the package with --max-length")

    @property
    def vocab_size(self) -> int:
        return self.contract.vocab_size

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def length(self) -> int:
        return self._length

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} positions to {length}")
        self._length = length  # positions past it are overwritten by the next step; GQA never reads them

    def _logits_buffer(self, rows: int) -> tuple[np.ndarray, ort.OrtValue]:
        """(1, rows, vocab) output buffer: one array, grown to the longest step so far (at most the context),
        whose leading rows are bound as an OrtValue; decode steps of one row reuse the same binding."""
        if rows > self._logits_rows.shape[1]:
            self._logits_rows = np.empty((1, rows, self.vocab_size), np.float32)
            self._logits_bound = None
        array = self._logits_rows[:, :rows]  # contiguous: batch is 1
        if self._logits_bound is None or self._logits_bound[0] != rows:
            self._logits_bound = (rows, ort.OrtValue.ortvalue_from_numpy(array))
        return array, self._logits_bound[1]

    @property
    def can_step_all(self) -> bool:
        """Whether step_all works: "all" packages, and "last" packages with the logits_to_keep input."""
        return self.contract.can_verify

    def step(self, ids: Sequence[int]) -> np.ndarray:
        """Appends ids to the cache; the logits (vocab,) after the last one."""
        return self._step(ids, 1)[-1].copy()

    def step_all(self, ids: Sequence[int], keep: int | None = None) -> np.ndarray:
        """Appends ids to the cache; the logits (keep, vocab) after each of the last `keep` of them (default all:
        a verify step)."""
        if not self.can_step_all:
            raise ValueError(f"{self.manifest.folder} returns logits for one position per step (package format "
                             f"1); re-export it with this version of the project to verify drafted tokens")
        keep = len(ids) if keep is None else keep
        if not 1 <= keep <= len(ids):
            raise ValueError(f"keep must be in 1..{len(ids)}, got {keep}")
        return self._step(ids, keep).copy()

    def _step(self, ids: Sequence[int], keep: int) -> np.ndarray:
        n, past = len(ids), self._length
        if n < 1:
            raise ValueError("a step needs at least one token id")
        if past + n > self._capacity:
            raise ValueError(f"{n} more tokens do not fit: {past} of {self._capacity} cache positions are in use")
        ids = np.asarray(ids, np.int64).reshape(n)  # (S,)
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the model's vocabulary (0..{self.vocab_size - 1}); the "
                             f"ids come from another tokenizer than the package's tokenizer.json")
        if self.contract.logits == "last" and n > SHORT:  # in runs whose attention scratch is bounded
            self._reserve(past + n)  # (step_rows; decode steps never split); "all" packages return every row of
            # one run (quality tools)
            # A run's total length (the mask's width) picks LongRoPE's tables, so the runs of a step that crosses
            # the switch get a mask padded with zeros past the switch: the long tables, as one run would have
            # (GroupQueryAttention reads each row's own length from the ones; the logits are bit-identical).
            switch = self.manifest.rope_switch
            width = switch + 1 if switch is not None and past <= switch < past + n else None
            rows, start = step_rows(self._heads, self.kv.capacity), 0
            try:
                while n - start > max(rows, keep):  # the rows whose logits are kept go in the last run
                    size = min(rows, n - start - keep)
                    self._run(ids[start:start + size], 1, width)
                    start += size
                return self._run(ids[start:], keep)
            except BaseException:
                self._length = past  # a step is whole or not at all; what the runs wrote is never read
                raise
        return self._run(ids, keep)

    def _run(self, ids: np.ndarray, keep: int, width: int | None = None) -> np.ndarray:
        """One session run appending `ids` (S,) int64, already checked, to the cache; the logits of its last
        `keep` positions (keep, vocab), a view of the output buffer. `width`: the attention mask's at least, padded
        with zeros (positions not held)."""
        n, past = len(ids), self._length
        ids = ids.reshape(1, n)  # (1, S)
        self._reserve(past + n)
        if self.contract.logits == "all":
            rows = n
        else:
            rows = keep
            if self.contract.keeps_logits:
                self._keep[0] = keep  # read through the bound OrtValue, which shares the array's memory
                self._bind_input(LOGITS_TO_KEEP, self._keep_value)
        array, value = self._logits_buffer(rows)
        if n == 1:  # a decode step: the token goes into the bound (1, 1) array; nothing is allocated
            self._one[0, 0] = ids[0, 0]
            self._bind_input(INPUT_IDS, self._one_value)
        else:
            self.binding.bind_cpu_input(INPUT_IDS, ids)
            self._bound[INPUT_IDS] = ids
        if width is not None and width > past + n:
            mask = np.zeros((1, width), np.int64)
            mask[:, :past + n] = 1
        else:
            mask = self._mask[:, :past + n]  # (1, P + S): its width changes every step, so it is bound every step
        self.binding.bind_cpu_input(ATTENTION_MASK, mask)
        if self._bound.get(LOGITS) is not value:
            self.binding.bind_ortvalue_output(LOGITS, value)
            self._bound[LOGITS] = value
        self.session.run_with_iobinding(self.binding)
        self._length = past + n
        self._last = array
        return array[0, -keep:]  # (keep, vocab)

    def _bind_input(self, name: str, value: ort.OrtValue) -> None:
        """Binds `value` unless it is bound already (its contents may have changed: ONNX Runtime reads them at run)."""
        if self._bound.get(name) is not value:
            self.binding.bind_ortvalue_input(name, value)
            self._bound[name] = value

    def last_logits(self) -> np.ndarray:
        """Every row the last step returned: (S, vocab) for "all" packages, (K, vocab) for "last" ones."""
        return self._last[0].copy()
