"""bench/gpu.py's results as Markdown tables, ready to paste into bench/README.md."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]


def cell(row: Row | None, key: str, fmt: str = "{:,.0f}", extra: str = "", width: int = 90) -> str:
    if row is None:
        return "-"
    if "skipped" in row:
        return f"skipped: {str(row['skipped'])[:width]}"
    if "error" in row:
        return f"error: {str(row['error'])[:width]}".replace("|", "/").replace("\n", " ")
    text = fmt.format(row[key])
    if extra and row.get(extra) is not None:
        text += f" ({row[extra]:,.0f})"
    if row.get("finite") is False:
        text += " NaN/inf!"
    return text


def grid(rows: list[Row], batches: list[int], key: str, extra: str) -> list[str]:
    """One line per (model, runtime), one column per batch."""
    models: dict[str, dict[str, dict[int, Row]]] = {}  # model -> runtime -> batch -> row, as they came
    for r in rows:
        models.setdefault(r["model"], {}).setdefault(r["runtime"], {})[int(r["batch"])] = r
    order = {(m, rt): by_batch for m, runtimes in models.items() for rt, by_batch in runtimes.items()}
    lines = [
        "| model | runtime | " + " | ".join(f"batch {n}" for n in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for (model, runtime), by_batch in order.items():
        cells = [cell(by_batch.get(n), key, extra=extra) for n in batches]
        if len(cells) > 1 and len(set(cells)) == 1 and cells[0].startswith(("skipped", "error")):
            cells = [cells[0].replace(": ", " (every batch): ", 1), *(["-"] * (len(cells) - 1))]
        lines.append(f"| {model} | {runtime} | " + " | ".join(cells) + " |")
    return lines


def memory_kinds(rows: list[Row]) -> str:
    kinds: dict[str, list[str]] = {}
    for r in rows:
        if r.get("memory_kind"):
            names = kinds.setdefault(r["memory_kind"], [])
            if r["runtime"] not in names:
                names.append(r["runtime"])
    return "; ".join(f"{k} for {', '.join(v)}" for k, v in kinds.items()) or "none measured"


def header_line(h: Row, args: Row) -> str:
    cuda = f", CUDA {h['cuda']}, cuDNN {h.get('cudnn')}" if h.get("cudnn") else ""
    driver = f", driver {h['driver']}" if h.get("driver") else ""
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in h.get("providers", []))
    return (
        f"Measured {h['date']} on **{h['device_name']}** "
        f"(host: {h['host_cpu']}, {h['host_cpus']} CPUs{driver}), "
        f"`--device {h['device']}`, {args.get('seconds')} s per point; Python {h['python']}, torch "
        f"{h.get('torch')}{cuda}, onnxruntime {h.get('onnxruntime')} (providers: {providers})."
    )


def setup_lines(results: Row) -> list[str]:
    slow: dict[str, list[str]] = {}
    for r in results.get("image", []) + results.get("text", []):
        for key, what in (("open_s", "open"), ("first_call_s", f"b{r['batch']}")):
            if r.get(key, 0) >= 1.0:
                slow.setdefault(r["model"], []).append(f"{r['runtime']} {what} {r[key]:.0f} s")
    lines = [
        "| model | export + parity, s | fp16 conversion, s | opening or first call over 1 s |",
        "|---|---|---|---|",
    ]
    for s in results.get("setup", []):
        first = "; ".join(slow.get(s["model"], [])) or "-"
        export, fp16 = cell(s, "export_s", "{:.1f}"), cell(s, "fp16_convert_s", "{:.1f}")
        lines.append(f"| {s['model']} | {export} | {fp16} | {first} |")
    return lines


def http_lines(r: Row | None) -> list[str]:
    lines = [
        "| model | device, precision | in flight | req/s | images/s | p50 ms | p99 ms | failed | "
        "host CPUs | server CPU ms/image | JPEG decode/s per core |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if r is None:
        return lines
    if "skipped" in r or "error" in r:
        return [*lines, f"| {cell(r, '', width=300)} |" + " |" * 10]
    lines.append(
        f"| {r['model']} | {r['device']} ({r.get('provider')}), {r['precision']} | {r['concurrency']} | "
        f"{r['requests_per_s']:,.1f} | {r['images_per_s']:,.1f} | {r['p50_ms']:,.0f} | {r['p99_ms']:,.0f} | "
        f"{r['errors']} of {r['requests']} | {r['host_cpus']} | {r['server_cpu_ms_per_image']:.1f} | "
        f"{r['jpeg_decode_per_core_images_per_s']:,.0f} |"
    )
    return lines


def train_lines(rows: list[Row]) -> list[str]:
    lines = [
        "| preset | device | global batch | steps timed | data workers | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "images_per_s" in r:
            lines.append(
                f"| {r['preset']} | {r['device']} | {r['batch_size']} | {r['timed_steps']} of {r['steps']} | "
                f"{r['num_workers']} | {r['images_per_s']:,.0f} |"
            )
        else:
            lines.append(f"| {r['preset']} | | | | | {cell(r, '', width=300)} |")
    return lines


def table(results: Row) -> str:
    args = results.get("args", {})
    batches = sorted({int(r["batch"]) for r in results.get("image", [])})
    texts = sorted({int(r["batch"]) for r in results.get("text", [])})
    out = [header_line(results["header"], args), ""]
    out += ["Image encoder, images/s (memory, MiB: " + memory_kinds(results.get("image", [])) + "):", ""]
    out += [*grid(results.get("image", []), batches, "images_per_s", "memory_mb"), ""]
    out += ["Text encoder, prompts/s of label prompts padded to the longest (tokens per prompt):", ""]
    out += [*grid(results.get("text", []), texts, "prompts_per_s", "tokens"), ""]
    out += ["Setup (random weights; the first call builds TensorRT engines, compiles, searches cuDNN):", ""]
    out += [*setup_lines(results), ""]
    out += ["End to end over HTTP (`zeroshot serve`, one 512 px JPEG + 10 labels per request):", ""]
    out += [*http_lines(results.get("http")), ""]
    out += ["`zeroshot train` (synthetic data, bf16 autocast):", ""]
    out += [*train_lines(results.get("train", [])), ""]
    b = results.get("budget", {})
    if b:
        other = b.get("other_work_cores")
        busy = f"; other processes kept {other:.2f} host cores busy meanwhile" if other is not None else ""
        used = f"used {b['elapsed_s']:.0f} s; {b['skipped']} steps skipped for it"
        out.append(f"Budget {b['budget_s']:.0f} s, {used}{busy}.")
    return "\n".join(out) + "\n"
