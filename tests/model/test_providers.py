"""Execution providers and their options, chosen as a GPU host would see them (the available list is
given, so this runs on a CPU), and the I/O-bound runner that a GPU session uses, run on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import model.bundle.encoders as encoders_module
from model.bundle.encoders import OnnxEncoders
from model.bundle.format import Bundle, BundleError
from model.bundle.io_binding import MAX_SHAPES, BoundRunner
from model.bundle.providers import (
    CPU_EP,
    CUDA_EP,
    TENSORRT_EP,
    GpuOptions,
    InputProfile,
    choose_providers,
)
from model.bundle.tokenizer import ClipTokenizer
from model.clip import build_model
from model.export import export_bundle, sample_inputs

ALL = [TENSORRT_EP, CUDA_EP, CPU_EP]
IMAGE = InputProfile("pixel_values", (-1, 3, 224, 224))
TEXT = InputProfile("input_ids", (-1, -1), max_len=77)


def names(providers: list[tuple[str, dict]]) -> list[str]:
    return [n for n, _ in providers]


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert names(choose_providers("auto", IMAGE, available=ALL)) == ALL
    assert names(choose_providers("auto", IMAGE, available=[CUDA_EP, CPU_EP])) == [CUDA_EP, CPU_EP]
    assert names(choose_providers("auto", IMAGE, available=[CPU_EP])) == [CPU_EP]
    assert names(choose_providers("cuda", IMAGE, available=ALL)) == [CUDA_EP, CPU_EP]
    assert names(choose_providers("cpu", IMAGE, available=ALL)) == [CPU_EP]
    assert names(choose_providers("tensorrt", IMAGE, available=ALL)) == ALL


def test_a_device_asked_for_by_name_must_exist() -> None:
    with pytest.raises(BundleError, match="device=cuda asked for, but onnxruntime offers only CPU"):
        choose_providers("cuda", IMAGE, available=[CPU_EP])
    with pytest.raises(BundleError, match="device=tensorrt"):
        choose_providers("tensorrt", IMAGE, available=[CUDA_EP, CPU_EP])
    with pytest.raises(BundleError, match="device must be"):
        choose_providers("tpu", IMAGE, available=ALL)


def test_cuda_options_follow_the_settings() -> None:
    gpu = GpuOptions(
        device_id=1, mem_limit_mb=2048, arena_strategy="same_as_requested", cudnn_conv_algo_search="heuristic"
    )
    (name, opts), _ = choose_providers("cuda", IMAGE, gpu, available=ALL)
    assert name == CUDA_EP
    assert opts["device_id"] == 1 and opts["gpu_mem_limit"] == 2048 * 1024 * 1024
    assert (
        opts["arena_extend_strategy"] == "kSameAsRequested" and opts["cudnn_conv_algo_search"] == "HEURISTIC"
    )
    (_, default), _ = choose_providers("cuda", IMAGE, GpuOptions(), available=ALL)
    assert "gpu_mem_limit" not in default and default["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_tensorrt_profiles_span_the_served_batches_and_text_lengths(tmp_path: Path) -> None:
    gpu = GpuOptions(max_batch=48, tensorrt_cache_dir=tmp_path / "trt")
    (_, img), *_ = choose_providers("tensorrt", IMAGE, gpu, available=ALL)
    assert img["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert img["trt_profile_max_shapes"] == "pixel_values:48x3x224x224"
    assert img["trt_fp16_enable"] is True
    assert img["trt_engine_cache_enable"] is True and img["trt_engine_cache_path"] == str(tmp_path / "trt")
    (_, txt), *_ = choose_providers("tensorrt", TEXT, gpu, available=ALL)
    assert txt["trt_profile_min_shapes"] == "input_ids:1x1"
    assert txt["trt_profile_max_shapes"] == "input_ids:48x77"
    (_, nocache), *_ = choose_providers("tensorrt", TEXT, GpuOptions(tensorrt_fp16=False), available=ALL)
    assert "trt_engine_cache_enable" not in nocache and nocache["trt_fp16_enable"] is False


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.manual_seed(0)
    images, texts = sample_inputs(64, n_images=4)
    root = tmp_path_factory.mktemp("providers")
    return export_bundle(build_model("tiny").eval(), ClipTokenizer.clip_bpe(), root / "m", images, texts[:30])


def test_bound_runner_gives_the_session_result_and_reuses_buffers(bundle: Bundle) -> None:
    sess = ort.InferenceSession(str(bundle.path / "text_encoder.onnx"), providers=[CPU_EP])
    runner = BoundRunner(sess, "cpu")
    rng = np.random.default_rng(0)
    for length in (5, 9, 5, 9, 5):
        ids = rng.integers(1, 1000, (3, length)).astype(np.int64)
        np.testing.assert_array_equal(runner.run(ids), sess.run(None, {"input_ids": ids})[0])
    assert runner.allocations == 2  # one buffer pair per shape, reused
    # a result is a copy: the next call into the same buffers does not change it
    first = runner.run(np.ones((2, 4), np.int64))
    other = runner.run(np.full((2, 4), 7, np.int64))
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first, sess.run(None, {"input_ids": np.ones((2, 4), np.int64)})[0])
    for length in range(10, 10 + MAX_SHAPES + 4):  # many shapes: the buffers kept stay bounded
        runner.run(np.ones((1, length), np.int64))
    assert len(runner._buffers) == MAX_SHAPES


def test_encoders_on_a_gpu_provider_take_the_bound_path(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU provider dressed as a GPU one: the encoders must route through BoundRunner and give
    the same features as the plain path."""
    plain = OnnxEncoders(bundle, device="cpu")
    monkeypatch.setattr(encoders_module, "GPU_PROVIDERS", {CPU_EP: "cpu"})
    bound = OnnxEncoders(bundle, device="cpu")
    assert bound._bound is not None and plain._bound is None
    images, texts = sample_inputs(64, n_images=4)
    np.testing.assert_allclose(bound.encode_images(images), plain.encode_images(images), atol=1e-6)
    np.testing.assert_allclose(bound.encode_texts(texts[:12]), plain.encode_texts(texts[:12]), atol=1e-6)
    assert bound._bound[0].allocations == 1 and bound._bound[1].allocations >= 1


def test_gpu_libraries_are_preloaded_once_before_a_cuda_session(monkeypatch: pytest.MonkeyPatch) -> None:
    import model.bundle.providers as providers

    calls: list[int] = []
    monkeypatch.setattr(providers, "_preload_done", False)
    monkeypatch.setattr(providers.ort, "preload_dlls", lambda: calls.append(1), raising=False)
    choose_providers("cpu", IMAGE, available=ALL)
    assert calls == []  # the CPU needs none
    choose_providers("auto", IMAGE, available=ALL)
    choose_providers("cuda", TEXT, available=ALL)
    assert calls == [1]
