"""Initializers streamed straight into the package's external data file, one tensor at a time.

Each tensor is appended to model.onnx.data as soon as it is ready and only its offset stays in memory, so
exporting never holds the whole model. Large tensors start on a 4096-byte boundary so ONNX Runtime can
memory-map them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

_ALIGN = 4096
_SMALL = 1024  # tensors below this many bytes stay inline in model.onnx

class WeightWriter:
    def __init__(self, data_path: Path):
        self.path = Path(data_path)
        self._file = open(self.path, "wb")
        self.initializers: list[TensorProto] = []
        self.bytes_written = 0
        self.largest_name = None
        self.largest = 0  # bytes of the largest tensor: one GPU buffer on WebGPU, within its per-buffer limit

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes > self.largest:
            self.largest, self.largest_name = array.nbytes, name
        if array.nbytes < _SMALL:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        offset = -(-self.bytes_written // _ALIGN) * _ALIGN
        self._file.write(b"\0" * (offset - self.bytes_written))
        self._file.write(memoryview(array).cast("B"))  # no copy
        self.bytes_written = offset + array.nbytes
        proto = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                            dims=list(array.shape), data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(proto)
        return name

    def close(self) -> None:
        self._file.close()
