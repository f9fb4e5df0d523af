"""Reading DeepSpeed's training states without running code from them.

DeepSpeed saves its states with torch.save (pickle) and loads them with torch.load(weights_only=False), which
runs whatever a pickled object asks for: a planted mp_rank_00_model_states.pt executes on --resume. Within
`weights_only_loads()` every torch.load is made with weights_only=True: tensors, numbers, strings, lists and
dicts, plus the few plain DeepSpeed types its ZeRO states hold (SAFE_GLOBALS, classes whose pickled form is
their fields; nothing they name is called). Anything else is refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch


def _safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeStateError(ValueError):
    pass


@contextlib.contextmanager
def weights_only_loads(where: Path) -> Iterator[None]:
    """Within the block, torch.load never unpickles code: weights_only=True whatever the caller passes."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = (f"a pickled reference to {found.group(1)}" if found
                else "a pickled object that is not a tensor or a plain value")
        raise UnsafeStateError(f"the DeepSpeed state in {where} holds {what}, which --resume does not unpickle (it "
                               f"could run code); resume only from states your own runs wrote") from None
    finally:
        torch.load = original
