"""Running a one-input, one-output encoder session with onnxruntime's I/O binding.

On a GPU, `session.run` with numpy arrays allocates a device buffer for the input and one for the
output on every call, and the copies are synchronous. Bound, the input and output live in device
buffers kept across calls of the same shape (the server sends a few batch sizes and text lengths
again and again), the input is copied into its buffer in place and the output read back once: no
per-call allocation. A small LRU of shapes bounds the device memory the buffers hold. The same code
runs on the CPU (device "cpu"), which is how it is tested on a machine without a GPU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import onnxruntime as ort

MAX_SHAPES = 16  # buffers kept: the warmed batch sizes plus a few text lengths


class BoundRunner:
    """`run(x)` = session.run(None, {input: x})[0], through device buffers reused per shape."""

    def __init__(self, session: ort.InferenceSession, device_type: str = "cuda", device_id: int = 0) -> None:
        self.session = session
        self.device_type, self.device_id = device_type, device_id
        self.input = session.get_inputs()[0].name
        self.output = session.get_outputs()[0].name
        self.width = int(session.get_outputs()[0].shape[-1])
        self._buffers: OrderedDict[tuple[int, ...], tuple[ort.OrtValue, ort.OrtValue, ort.IOBinding]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()  # the buffers are shared: one call at a time per runner
        self.allocations = 0  # buffer pairs made: what the tests read to show reuse

    def _buffers_for(self, x: np.ndarray) -> tuple[ort.OrtValue, ort.OrtValue, ort.IOBinding]:
        key = x.shape
        got = self._buffers.get(key)
        if got is not None:
            self._buffers.move_to_end(key)
            return got
        dev, i = self.device_type, self.device_id
        inp = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype, dev, i)
        out = ort.OrtValue.ortvalue_from_shape_and_type([x.shape[0], self.width], np.float32, dev, i)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input, inp)
        binding.bind_ortvalue_output(self.output, out)
        self._buffers[key] = (inp, out, binding)
        self.allocations += 1
        if len(self._buffers) > MAX_SHAPES:
            self._buffers.popitem(last=False)
        return inp, out, binding

    def run(self, x: np.ndarray) -> np.ndarray:
        """The session's output for x, as a float32 numpy array (a copy: the buffer is reused)."""
        x = np.ascontiguousarray(x)
        with self._lock:
            inp, out, binding = self._buffers_for(x)
            inp.update_inplace(x)
            self.session.run_with_iobinding(binding)
            return np.array(out.numpy(), np.float32, copy=True)
