"""Coverage-guided fuzzing of the service's parsers with atheris (libFuzzer), one target at a time.

    .venv/bin/python bench/fuzz.py --seconds 600                  # every target, 10 minutes each
    .venv/bin/python bench/fuzz.py --seconds 60 tokenizer fields  # some of them

Targets are in bench/fuzz_targets.py. Each runs in its own process (libFuzzer exits when done), with
the project's modules and the parsers under them (Pillow, python-multipart, starlette, pydantic,
tokenizers' Python side) instrumented for coverage. The corpus each run grows is kept in
bench/fuzz-corpus/<target>/ (seeded from fuzz_targets.seeds) and reused by the next run; a crashing
input is written there as crash-<sha1> and makes the run fail. Prints, per target: executions, edge
coverage, features, corpus size and crashes; writes bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "bench" / "fuzz-corpus"
# the project and the pure-Python parsers under it (tokenizers and pydantic-core are Rust: not seen)
INSTRUMENT = [
    "app",
    "model.bundle",
    "bench.fuzz_targets",
    "PIL",
    "python_multipart",
    "starlette",
    "pydantic",
    "ftfy",
]
STATS = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+))?")


def _run_one(target: str, libfuzzer_args: list[str]) -> None:
    """In the child: import the targets instrumented, then hand over to libFuzzer (never returns)."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=INSTRUMENT):
        from bench import fuzz_targets
    fn = fuzz_targets.TARGETS[target]
    fn(fuzz_targets.seeds(target)[0])  # build what the target caches before the clock starts
    atheris.Setup([sys.argv[0], *libfuzzer_args], fn)
    atheris.Fuzz()


def fuzz(target: str, seconds: int) -> dict[str, object]:
    from bench.fuzz_targets import seeds

    corpus = CORPUS / target
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    args = [
        f"-max_total_time={seconds}",
        "-timeout=20",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={corpus}/",
        str(corpus),
    ]
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", target, "--", *args], cwd=ROOT, capture_output=True, text=True
    )
    log = proc.stdout + proc.stderr
    (corpus.parent / f"{target}.log").write_text(log)
    last = STATS.findall(log)[-1] if STATS.search(log) else ("0", "0", "0", "")
    crashes = sorted(p.name for p in corpus.glob("crash-*")) + sorted(
        p.name for p in corpus.glob("timeout-*")
    )
    return {
        "target": target,
        "seconds": round(time.monotonic() - t),
        "executions": int(last[0]),
        "coverage_edges": int(last[1]),
        "features": int(last[2]),
        "corpus": len(list(corpus.iterdir())) - len(crashes),
        "crashes": crashes,
        "exit": proc.returncode,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _run_one(sys.argv[2], sys.argv[4:])
        return
    sys.path.insert(0, str(ROOT))
    from bench.fuzz_targets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", choices=[[], *TARGETS], help="default: all")  # type: ignore[list-item]
    ap.add_argument("--seconds", type=int, default=600, help="per target")
    args = ap.parse_args()
    results = []
    for target in args.targets or list(TARGETS):
        r = fuzz(target, args.seconds)
        results.append(r)
        print(json.dumps(r), flush=True)
    out = ROOT / "bench" / "results" / "fuzz.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results}, indent=1) + "\n")
    if any(r["crashes"] for r in results):
        sys.exit(f"crashes found: see {CORPUS}/<target>/crash-* and <target>.log")


if __name__ == "__main__":
    main()
