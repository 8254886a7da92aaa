"""int8 image encoders: `zeroshot export --int8` writes image_encoder.int8.onnx beside the fp32 one.

A ResNet tower is quantized statically (its convolutions become onnxruntime's fast QLinearConv), a
ViT dynamically (its MatMuls); either way the agreement with fp32 on real images is measured and
kept in the manifest, so a user can judge the trade before serving it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle.encoders import open_session, run_normalized
from model.bundle.format import IMAGE_ENCODER, IMAGE_ENCODER_INT8

INT8_OP_TYPES = ["MatMul", "Gemm"]  # what dynamic quantization touches (a ViT's time is in them)
INT8_CALIBRATION_BATCH = 32


def _quantize_static(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8: activations uint8 with ranges calibrated (min/max) on real images, weights
    int8 per output channel. onnxruntime fuses each QuantizeLinear/Conv/DequantizeLinear into one
    QLinearConv, its fast int8 convolution; dynamic quantization would give ConvInteger, which
    requantizes every activation at run time and is slower than fp32 Conv on CPU."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(calibration):
                return None
            x = calibration[self.start : self.start + INT8_CALIBRATION_BATCH]
            self.start += INT8_CALIBRATION_BATCH
            return {"pixel_values": x}

    with tempfile.TemporaryDirectory(prefix="zeroshot-int8-") as tmp:  # never inside the bundle
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre))  # shape inference + folding, as the quantizer expects
        quantize_static(
            str(pre),
            str(dst),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


def quantize_image_encoder(
    out_dir: Path, images: np.ndarray, tower: str, calibration: np.ndarray | None = None
) -> dict[str, Any]:
    """Write image_encoder.int8.onnx beside the fp32 encoder and measure how closely it agrees with
    it on `images`. A ResNet tower (its time is in convolutions) is quantized statically, calibrated
    on `calibration` (default: `images`); a ViT dynamically (MatMuls only, nothing to calibrate)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = out_dir / IMAGE_ENCODER, out_dir / IMAGE_ENCODER_INT8
    record: dict[str, Any] = {"file": IMAGE_ENCODER_INT8}
    if tower == "resnet":
        cal = np.ascontiguousarray(images if calibration is None else calibration, dtype=np.float32)
        _quantize_static(src, dst, cal)
        record.update(method="static", quantized_ops=["Conv", "MatMul", "Gemm"], calibration_images=len(cal))
    else:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OP_TYPES)
        record.update(method="dynamic", quantized_ops=INT8_OP_TYPES)
    fp32, int8 = (run_normalized(open_session(p), {"pixel_values": images}) for p in (src, dst))
    cos = (fp32 * int8).sum(axis=1)
    return {
        **record,
        "cosine_to_fp32_min": float(cos.min()),
        "cosine_to_fp32_mean": float(cos.mean()),
        "images_checked": len(images),
    }
