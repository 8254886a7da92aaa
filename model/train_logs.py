"""What a training run leaves to read: metrics.jsonl (one JSON object per step), TensorBoard event files
under tb/, and curves.png (loss, learning rate, temperature, eval accuracy) written at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from model.bundle.atomic import atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only per-step records; on resume, the history after the resumed step is dropped first."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool = True) -> None:
        self.path = out / "metrics.jsonl"
        if self.path.exists():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= start_step
            ]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))  # a crash keeps the old
        self._file = self.path.open("a")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the `tensorboard` package is missing; the JSON lines still hold it all
                log.warning("tensorboard is not installed: no event files (pip install tensorboard)")
            else:
                self._tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)

    def write(self, rec: dict[str, Any]) -> None:
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in rec.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, rec["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, png: Path) -> None:
    """Loss, learning rate, temperature and eval accuracy against step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    if not recs:
        return
    steps = [r["step"] for r in recs]
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0, 0].plot(steps, [r["loss"] for r in recs], lw=0.8)
    ax[0, 0].set(title="training loss", xlabel="step", yscale="log")
    ax[0, 1].plot(steps, [r["lr"] for r in recs])
    ax[0, 1].set(title="learning rate", xlabel="step")
    scaled = [r for r in recs if "logit_scale" in r]  # a predictive objective has no temperature
    ax[1, 0].plot([r["step"] for r in scaled], [r["logit_scale"] for r in scaled])
    ax[1, 0].set(title="logit scale exp(t)", xlabel="step")
    curves = (
        ("heldout_top1", "held-out pairs (zero-shot)"),
        ("seen_top1", "seen pairs"),
        ("eval_top1", "eval folder top-1"),
    )
    for key, lab in curves:
        ev = [r for r in recs if key in r]
        if ev:
            ax[1, 1].plot([r["step"] for r in ev], [100 * r[key] for r in ev], marker="o", label=lab)
    ax[1, 1].set(title="zero-shot top-1 (%)", xlabel="step", ylim=(0, 100))
    if ax[1, 1].lines:
        ax[1, 1].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    log.info("wrote %s", png)
