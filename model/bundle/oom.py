"""Whether an error from an encoder means it ran out of memory, so a smaller batch may still fit.

onnxruntime raises its own classes (onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException,
Fail, ...) for every kind of failure, so only the message tells an allocation failure from a shape or
a model error. The patterns are the messages its CUDA, cuDNN and arena allocators give, e.g. "Failed to
allocate memory for requested buffer of size N", "CUDA failure 2: out of memory",
"CUDNN_STATUS_ALLOC_FAILED", "BFCArena ... Available memory of 0 is smaller than requested bytes".
Matched by message, not by class: onnxruntime is not imported here (the core stays free of it, and
OpenVINO's errors read alike). Torch-free.
"""

from __future__ import annotations

OOM_PATTERNS = (
    "out of memory",
    "failed to allocate memory",
    "alloc_failed",
    "available memory of",
    "cudaerrormemoryallocation",
    "outofmemory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True when `exc` (or an error it was raised from) reports memory that could not be allocated."""
    seen: set[int] = set()
    e: BaseException | None = exc
    # A wrapper may carry the allocator's error as its explicit cause (`raise ... from e`); the
    # implicit __context__ is not followed: an unrelated error raised while handling one is not an OOM.
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError):
            return True
        message = str(e).lower()
        if any(p in message for p in OOM_PATTERNS):
            return True
        e = e.__cause__
    return False
