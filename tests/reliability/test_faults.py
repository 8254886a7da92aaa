"""Faults: what the disk and other processes can do to a running service, and what must survive it.

- A corrupt bundle published under a running `zeroshot serve` (an encoder truncated under a manifest
  rehashed to match it, a manifest that is not JSON, CURRENT naming a missing version or a path;
  for SigLIP, a garbled tokenizer.json, an unknown scoring kind, a NaN logit_bias, an unknown
  resize): each is refused and reported, and the old model answers every request meanwhile.
- `zeroshot export` SIGKILLed at several points while it writes: CURRENT is unchanged (or names the
  complete new version), every visible version loads with its hashes verified, the running server
  keeps answering, and the next export removes the temporary folders the killed ones left.
- A full disk: `zeroshot export` ends with a one-line `zeroshot: error:` and exit 1, CURRENT is
  unchanged, nothing half-written stays and the space is released; registering a label set answers
  507 and changes nothing, a large upload that must be spooled to disk answers 507, and the server
  stays healthy.
- Two exports into one model folder: the clean-up each export runs first removes only the folders
  of dead writers (their flock died with them), never a live one's.
- Damaged label-set files: a JSON definition that is truncated, garbage or of the wrong types is
  reported (log + 503 `label_set_unreadable`) while every other set keeps working; a stored matrix
  that is truncated, empty, of the wrong shape or not unit rows is rebuilt from the definition.

The full disk is real: a small tmpfs, so writes fail with ENOSPC. Mounting needs root (or
CAP_SYS_ADMIN), which the CI machines have. Where mount is not permitted the tests fall back to
RLIMIT_FSIZE on the writing process (the export subprocess, or the server via prlimit), whose writes
then fail with EFBIG, which the code treats the same way; ZEROSHOT_TEST_NO_MOUNT=1 forces the fallback.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from model.bundle.format import (
    CURRENT,
    IMAGE_ENCODER,
    MANIFEST,
    TEXT_ENCODER,
    TOKENIZER,
    current_bundle,
    load_bundle,
    read_current,
    remove_abandoned,
    set_current,
    sha256_file,
    write_bundle,
)
from tests.conftest import DEFAULT_MODEL_DIR, ROOT
from tests.reliability.conftest import ADMIN_TOKEN, live_server, server_settings
from tests.servers import require_default_model, served_process

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LABELS = ["red circle", "blue square", "green triangle"]


# --- helpers ---------------------------------------------------------------------------------------


def png(size: int = 64, noise: bool = False) -> bytes:
    rng = np.random.default_rng(size)
    if noise:  # incompressible: the PNG is about as large as its pixels
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        arr = np.zeros((size, size, 3), np.uint8)
        arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (220, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def classify(base: str, **data: Any) -> httpx.Response:
    data = data or {"labels": LABELS}
    return httpx.post(
        f"{base}/v1/classify", files={"image": ("x.png", png(), "image/png")}, data=data, timeout=60
    )


def served_version(base: str) -> str:
    r = classify(base)
    assert r.status_code == 200, r.text
    return str(r.json()["model"]["version"])


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def copy_bundle(source: Path, model_dir: Path, version: str) -> Path:
    """The current bundle of model folder `source` copied in as `version` (its manifest says so);
    not published."""
    dst = model_dir / version
    shutil.copytree(current_bundle(source, verify_hashes=False).path, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["version"] = version
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def copy_default(model_dir: Path, version: str) -> Path:
    """The default bundle copied in as `version`; not published."""
    require_default_model()
    return copy_bundle(DEFAULT_MODEL_DIR, model_dir, version)


def rehash(bundle: Path, manifest: dict[str, Any]) -> None:
    """Make the manifest's hashes and sizes match the files again (damage only loading can tell)."""
    for name in manifest["files"]:
        f = bundle / name
        manifest["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}


def write_current(model_dir: Path, text: str) -> None:
    """Point CURRENT anywhere, bypassing set_current's check (as a broken script or hand would)."""
    tmp = model_dir / ".CURRENT.test"
    tmp.write_text(text + "\n")
    os.replace(tmp, model_dir / CURRENT)


def versions_visible(model_dir: Path) -> list[str]:
    """What a reader could take for a version: every entry not hidden and not CURRENT."""
    return sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".") and p.name != CURRENT)


def hidden(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith("."))


def assert_models_folder_sound(model_dir: Path, current_in: set[str]) -> str:
    """CURRENT names one of `current_in` and loads with every hash verified; so does every visible
    version (no folder without a valid manifest looks like a version). Returns CURRENT."""
    current = read_current(model_dir)
    assert current in current_in, f"CURRENT is {current!r}, expected one of {sorted(current_in)}"
    assert current_bundle(model_dir, verify_hashes=True).version == current
    for v in versions_visible(model_dir):
        assert load_bundle(model_dir / v, verify_hashes=True).version == v
    return current


class Client(threading.Thread):
    """Classifies in a loop until stopped, recording (status, version or error body) per request."""

    def __init__(self, base: str, pause_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.base, self.pause_s = base, pause_s
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                r = classify(self.base)
                ok = r.status_code == 200
                self.answers.append((r.status_code, r.json()["model"]["version"] if ok else r.text))
            except httpx.HTTPError as e:
                self.answers.append((0, repr(e)))
            time.sleep(self.pause_s)

    def finish(self, last_version: str | None = None) -> list[tuple[int, str]]:
        """Stop; first, if given, wait for an answer from last_version (one request may have been
        in flight on the old model when the caller saw the new one)."""
        if last_version is not None:
            wait_for(
                f"the client to be answered by {last_version}",
                lambda: bool(self.answers) and self.answers[-1][1] == last_version,
                30,
            )
        self.stop.set()
        self.join(timeout=60)
        return self.answers


# --- a small disk that can be filled ---------------------------------------------------------------


class SmallDisk:
    """A folder whose writes can be made to fail: a tmpfs of `size` bytes (ENOSPC) when mounting is
    permitted, else a plain folder plus RLIMIT_FSIZE on the writing process (EFBIG)."""

    def __init__(self, path: Path, size: int, mounted: bool) -> None:
        self.path, self.size, self.mounted = path, size, mounted
        self.filler = path / ".filler"

    @property
    def errno_text(self) -> str:
        return "No space left on device" if self.mounted else "File too large"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def _limit(self, pid: int, soft: int) -> None:
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))

    def fill(self, pid: int) -> None:
        """No byte more can be written (by process `pid`, for the fallback)."""
        if not self.mounted:
            return self._limit(pid, 0)
        with self.filler.open("wb", buffering=0) as f:
            chunk = b"\0" * (1 << 16)
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.strerror == self.errno_text, e

    def leave(self, pid: int, nbytes: int) -> None:
        """Room for files of about nbytes (tmpfs: free that much; fallback: files up to that size)."""
        if not self.mounted:
            return self._limit(pid, nbytes)
        os.truncate(self.filler, max(0, self.filler.stat().st_size - nbytes))

    def release(self, pid: int) -> None:
        if not self.mounted:
            return self._limit(pid, resource.RLIM_INFINITY)
        self.filler.unlink()

    def preexec(self, limit: int) -> Callable[[], None] | None:
        """For a subprocess that writes here: nothing on tmpfs; the fallback's file-size limit."""
        if self.mounted:
            return None
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))


@contextmanager
def small_disk(path: Path, size: int) -> Iterator[SmallDisk]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.environ.get("ZEROSHOT_TEST_NO_MOUNT") != "1" and shutil.which("mount"):
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        mounted = subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        yield SmallDisk(path, size, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


# --- a small model's checkpoint, for real exports ---------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random `tiny` model (the default model's architecture) saved as `zeroshot train` would."""
    import torch

    from model.clip import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict()}, path)
    return path


def export_cmd(checkpoint: Path, model_dir: Path, version: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "model.cli",
        "export",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(model_dir),
        "--version",
        version,
    ]


# --- corrupt bundles -------------------------------------------------------------------------------

Published = tuple[Callable[[], None], list[str]]  # publish a broken version; what the refusal says


def assert_refused_while_serving(
    tmp_path: Path, m: Path, cases: list[Published], good: Callable[[], str]
) -> None:
    """Serve model folder `m` (v1 published) while a client classifies; publish each broken case in
    turn: each must be refused with a reason holding every expected string, v1 answering meanwhile.
    Then `good()` publishes a sound version (returned), which must be served."""
    env = {
        "ZEROSHOT_MODELS_DIR": str(m.parent),
        "ZEROSHOT_MODEL_NAME": m.name,
        "ZEROSHOT_RELOAD_INTERVAL_S": "0.1",
    }
    with served_process(tmp_path, env) as (proc, base):
        client = Client(base)
        client.start()
        try:
            for publish, expected in cases:
                publish()

                def reported(expected: list[str] = expected) -> bool:
                    error = httpx.get(f"{base}/v1/models", timeout=30).json()["reload_error"] or ""
                    return all(s in error for s in expected)

                wait_for(f"the server to report {expected}", reported, 30)
                assert served_version(base) == "v1"
                assert httpx.get(f"{base}/readyz").status_code == 200
            last = good()
            wait_for(f"{last} to be served", lambda: served_version(base) == last, 30)
            assert httpx.get(f"{base}/v1/models").json()["reload_error"] is None
            answers = client.finish(last)
        finally:
            client.finish()
        assert proc.poll() is None
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:3]
    versions = [v for _, v in answers]
    assert len(versions) > 10 and versions[0] == "v1" and versions[-1] == last


def test_corrupt_bundles_published_to_a_running_server_are_refused(tmp_path: Path) -> None:
    """Each broken publication is refused with a reason that names the problem, while a client keeps
    classifying: every request succeeds, on v1 until the good v5 arrives, never on a broken one."""
    m = tmp_path / "models" / "m"
    m.mkdir(parents=True)
    copy_default(m, "v1")
    set_current(m, "v1")

    def truncated_encoder_rehashed() -> None:  # hashes and sizes match: only loading can tell
        b = copy_default(m, "v2")
        enc = b / IMAGE_ENCODER
        os.truncate(enc, enc.stat().st_size // 2)
        manifest = json.loads((b / MANIFEST).read_text())
        rehash(b, manifest)
        (b / MANIFEST).write_text(json.dumps(manifest))
        set_current(m, "v2")

    def manifest_not_json() -> None:
        b = copy_default(m, "v3")
        text = (b / MANIFEST).read_text()
        (b / MANIFEST).write_text(text[: len(text) // 2])
        set_current(m, "v3")

    def text_encoder_missing() -> None:
        b = copy_default(m, "v4")
        (b / TEXT_ENCODER).unlink()
        set_current(m, "v4")

    def good() -> str:
        copy_default(m, "v5")
        set_current(m, "v5")
        return "v5"

    cases: list[Published] = [
        (
            truncated_encoder_rehashed,
            ["version v2 refused", f"{IMAGE_ENCODER} cannot be loaded by onnxruntime"],
        ),
        (manifest_not_json, ["version v3 refused", f"{MANIFEST} is not valid JSON"]),
        (
            text_encoder_missing,
            ["version v4 refused", f"{TEXT_ENCODER} is listed in the manifest but missing"],
        ),
        (lambda: write_current(m, "v9"), ["version v9 refused", "does not exist"]),
        (lambda: write_current(m, "../v1"), ["invalid version '../v1'"]),
    ]
    assert_refused_while_serving(tmp_path, m, cases, good)


def test_corrupt_siglip_bundles_published_to_a_running_server_are_refused(
    tmp_path: Path, siglip_models: Path
) -> None:
    """What only a SigLIP bundle holds, damaged under hashes rehashed to match (so only loading can
    tell): its SentencePiece tokenizer.json, its sigmoid scoring, its square resize. Each is refused
    when loaded, never accepted to fail later (a NaN logit_bias used to load and answer mode=multi
    with a 500), while the old version answers."""
    src = siglip_models / "siglip"
    m = tmp_path / "models" / "m"
    m.mkdir(parents=True)
    copy_bundle(src, m, "v1")
    set_current(m, "v1")

    def damaged(version: str, damage: Callable[[Path, dict[str, Any]], object]) -> Callable[[], None]:
        def publish() -> None:
            b = copy_bundle(src, m, version)
            manifest = json.loads((b / MANIFEST).read_text())
            damage(b, manifest)
            rehash(b, manifest)
            (b / MANIFEST).write_text(json.dumps(manifest))  # (json writes NaN and Infinity as such)
            set_current(m, version)

        return publish

    def cut(f: Path) -> None:
        os.truncate(f, f.stat().st_size // 2)

    def garble(f: Path) -> None:  # 64 random bytes over the middle: neither UTF-8 nor JSON any more
        data = bytearray(f.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = random.Random(3).randbytes(64)
        f.write_bytes(bytes(data))

    def good() -> str:
        copy_bundle(src, m, "v8")
        set_current(m, "v8")
        return "v8"

    unreadable = f"{TOKENIZER}: not a tokenizer.json `tokenizers` can read"
    cases: list[Published] = [
        (damaged("v2", lambda b, _: cut(b / TOKENIZER)), ["version v2 refused", unreadable]),
        (damaged("v3", lambda b, _: garble(b / TOKENIZER)), ["version v3 refused", unreadable]),
        (
            damaged("v4", lambda _, mf: mf.update(scoring={"kind": "cosine-magic"})),
            ["version v4 refused", "scoring kind 'cosine-magic' is not one this server implements"],
        ),
        (
            damaged("v5", lambda _, mf: mf["scoring"].update(logit_bias=float("nan"))),
            ["version v5 refused", "logit_bias nan is not a finite number"],
        ),
        (
            damaged("v6", lambda _, mf: mf["preprocessing"].update(resize="fisheye")),
            ["version v6 refused", "unsupported preprocessing resize='fisheye'"],
        ),
        (  # the scale every score is multiplied by (CLIP's too): Infinity used to load, then 500
            damaged("v7", lambda _, mf: mf.update(logit_scale=float("inf"))),
            ["version v7 refused", "logit_scale inf is not a finite positive number"],
        ),
    ]
    assert_refused_while_serving(tmp_path, m, cases, good)


# --- export killed half-way ------------------------------------------------------------------------


def kill_export_when(
    checkpoint: Path, model_dir: Path, version: str, moment: Callable[[], bool], log: Path
) -> bool:
    """Run `zeroshot export` into model_dir and SIGKILL it as soon as moment() is true (polled every
    2 ms). Returns whether it was still running when killed."""
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            export_cmd(checkpoint, model_dir, version), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        while not moment():
            if proc.poll() is not None:
                pytest.fail(
                    f"export {version} ended (rc {proc.returncode}) first:\n{log.read_text()[-2000:]}"
                )
            if time.monotonic() - t0 > 300:
                pytest.fail(f"export {version} never reached the moment to kill it")
            time.sleep(0.002)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return running


def test_export_killed_half_way_never_publishes_half_a_bundle(tmp_path: Path, checkpoint: Path) -> None:
    """SIGKILL lands: as the temporary folder appears (nothing written yet); at a random moment
    (seeded) after the image encoder is written (half a bundle on disk: text encoder export, parity
    check, hashing); right after the finished folder is renamed into place (before or after CURRENT
    moves). A running server answers throughout."""
    m = tmp_path / "models" / "m"
    m.mkdir(parents=True)
    copy_default(m, "v1")
    set_current(m, "v1")
    rng = random.Random(6)

    def tmp_of(version: str) -> list[Path]:
        return [p for p in m.iterdir() if p.name.startswith(f".tmp-{version}-")]

    def has_image_encoder(version: str) -> bool:
        return any((t / IMAGE_ENCODER).exists() for t in tmp_of(version))

    def after(delay_s: float, version: str) -> Callable[[], bool]:
        """delay_s after the image encoder is written: the text encoder's export or the parity check."""
        first: list[float] = []

        def moment() -> bool:
            if not first and has_image_encoder(version):
                first.append(time.monotonic())
            return bool(first) and time.monotonic() - first[0] >= delay_s

        return moment

    delay = rng.uniform(0.0, 1.5)
    runs: list[tuple[str, str, Callable[[], bool]]] = [
        ("k1", "the temporary folder appears", lambda: bool(tmp_of("k1"))),
        ("k2", f"{delay:.2f} s after {IMAGE_ENCODER} is in it", after(delay, "k2")),
    ]
    env = {
        "ZEROSHOT_MODELS_DIR": str(m.parent),
        "ZEROSHOT_MODEL_NAME": "m",
        "ZEROSHOT_RELOAD_INTERVAL_S": "0.1",
    }
    with served_process(tmp_path, env) as (_, base):
        client = Client(base, pause_s=0.25)
        client.start()
        try:
            previous: list[str] = []
            for version, when, moment in runs:
                running = kill_export_when(checkpoint, m, version, moment, tmp_path / f"{version}.log")
                assert running, f"export {version} had already ended when killed ({when})"
                # Nothing new is visible: CURRENT is v1 and loads, no new version folder exists.
                assert assert_models_folder_sound(m, {"v1"}) == "v1"
                assert versions_visible(m) == ["v1"], f"killed when {when}"
                # What it left is hidden, and the previous run's leftover was removed by this export.
                left = hidden(m)
                assert len(left) == 1 and left[0].startswith(f".tmp-{version}-"), (when, left)
                assert not set(previous) & set(left)
                previous = left
                assert served_version(base) == "v1"
            # Killed the instant its finished folder appears: CURRENT may or may not have moved, and
            # either way it names a whole bundle.
            kill_export_when(checkpoint, m, "k3", lambda: (m / "k3").exists(), tmp_path / "k3.log")
            current = assert_models_folder_sound(m, {"v1", "k3"})
            assert versions_visible(m) == ["k3", "v1"]
            assert hidden(m) == [], "the leftovers of k1 and k2 were not all removed"
            if current == "v1":  # finish the publication the kill interrupted
                set_current(m, "k3")
            wait_for("k3 to be served", lambda: served_version(base) == "k3", 60)
            models = httpx.get(f"{base}/v1/models").json()
            assert models["reload_error"] is None  # leftovers never looked like a version to it
            answers = client.finish("k3")
        finally:
            client.finish()
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:3]
    assert {v for _, v in answers} == {"v1", "k3"} and answers[-1][1] == "k3"


def test_cleanup_removes_only_abandoned_temporary_folders(tmp_path: Path) -> None:
    """The clean-up that every export runs first tells a dead writer's folder (no lock: removed) from
    a live one's (flock held: kept), so two exports into one model folder cannot break each other."""
    m = tmp_path / "m"
    (m / ".tmp-dead-1").mkdir(parents=True)  # what a SIGKILLed export leaves (its lock died with it)
    (m / ".tmp-dead-1" / IMAGE_ENCODER).write_bytes(b"half")
    seen: dict[str, Any] = {}

    def write_files(tmp: Path) -> None:
        for name in (IMAGE_ENCODER, TEXT_ENCODER, "tokenizer.json"):
            (tmp / name).write_bytes(name.encode())
        seen["dead-1 left"] = (m / ".tmp-dead-1").exists()  # write_bundle cleaned before it began
        (m / ".tmp-dead-2").mkdir()  # another dead one, and another export starting now:
        seen["removed"] = [p.name for p in remove_abandoned(m)]
        seen["own kept"] = (tmp / IMAGE_ENCODER).exists()

    keys = ("architecture", "preprocessing", "tokenizer")
    write_bundle(m, "v1", {**{k: {} for k in keys}, "logit_scale": 1.0}, write_files)
    assert seen == {"dead-1 left": False, "removed": [".tmp-dead-2"], "own kept": True}
    assert hidden(m) == [] and versions_visible(m) == ["v1"]


# --- a full disk ----------------------------------------------------------------------------------


def test_export_to_a_full_disk_fails_cleanly(tmp_path: Path, checkpoint: Path) -> None:
    """Room for the image encoder (21 MB) but not the text encoder (26 MB) beside the current bundle:
    one error line, exit 1, CURRENT untouched, the partial bundle gone and its space given back."""
    require_default_model()
    served = current_bundle(DEFAULT_MODEL_DIR, verify_hashes=False)
    files = served.manifest["files"]  # the random checkpoint exports files of the same sizes
    room = sum(f["bytes"] for f in files.values()) + files[IMAGE_ENCODER]["bytes"]
    room += files[TEXT_ENCODER]["bytes"] // 2
    with small_disk(tmp_path / "disk", room) as disk:
        m = disk.path / "m"
        m.mkdir()
        copy_default(m, "v1")
        set_current(m, "v1")
        free = disk.free_bytes()
        r = subprocess.run(
            export_cmd(checkpoint, m, "v2"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=disk.preexec(files[IMAGE_ENCODER]["bytes"] + 2**20),
        )
        assert r.returncode == 1, r.stderr[-2000:]
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("zeroshot: error: exporting ") and disk.errno_text in last, last
        assert assert_models_folder_sound(m, {"v1"}) == "v1"
        assert versions_visible(m) == ["v1"] and hidden(m) == []
        if disk.mounted:
            assert disk.free_bytes() == free  # the half-written files are gone, not just hidden


def test_label_sets_and_uploads_on_a_full_disk(tmp_path: Path) -> None:
    """The label-set folder and the upload spool on a disk that fills up: 507 with a clear message,
    no change to what is registered or served, no temporary files left, and the server healthy.
    With a little room back, a set whose definition fits but whose matrix does not is registered and
    served from memory; with the room back, everything is stored again."""
    with small_disk(tmp_path / "disk", 4 * 2**20) as disk:
        sets, spool = disk.path / "sets", disk.path / "spool"
        sets.mkdir()
        spool.mkdir()
        env = {
            "ZEROSHOT_ADMIN_TOKEN": ADMIN_TOKEN,
            "ZEROSHOT_LABEL_SETS_DIR": str(sets),
            "TMPDIR": str(spool),  # where Starlette spools uploads over 1 MB
        }
        with served_process(tmp_path, env) as (proc, base):

            def put(name: str, labels: list[str]) -> httpx.Response:
                body = {"labels": labels, "templates": "default"}
                return httpx.put(f"{base}/v1/label-sets/{name}", json=body, headers=ADMIN, timeout=60)

            def top(name: str) -> list[str]:
                r = classify(base, label_set=name)
                assert r.status_code == 200, r.text
                return sorted(x["label"] for x in r.json()["results"][0]["labels"])

            def no_temporaries() -> None:
                # no temporary left, here or in .pending/ (where a new definition waits for its build)
                assert [p.name for p in sets.rglob(".*") if p.name != ".pending"] == []
                assert not (sets / ".pending").exists() or list((sets / ".pending").iterdir()) == []
                assert sorted(spool.iterdir()) == spooled  # (uploads spool to unnamed files)

            def classify_big() -> httpx.Response:
                files = {"image": ("big.png", big, "image/png")}
                return httpx.post(f"{base}/v1/classify", files=files, data={"labels": LABELS}, timeout=60)

            big = png(700, noise=True)  # ~1.5 MB: Starlette spools it to a temporary file as it arrives
            assert len(big) > 2**20
            # The first spooled upload also fixes the server's temporary folder (Python picks TMPDIR
            # only if it can write there at that moment).
            assert classify_big().status_code == 200
            assert put("a", LABELS).status_code == 200
            spooled, free = sorted(spool.iterdir()), disk.free_bytes()
            disk.fill(proc.pid)

            r = put("b", ["cat", "dog"])
            assert r.status_code == 507, r.text
            err = r.json()["error"]
            assert err["code"] == "insufficient_storage"
            assert "'b'" in err["message"] and disk.errno_text in err["message"]
            assert httpx.get(f"{base}/v1/label-sets/b").status_code == 404
            r = put("a", ["cat", "dog"])  # replacing a set: the old one must stay, on disk and served
            assert r.status_code == 507, r.text
            assert httpx.get(f"{base}/v1/label-sets/a").json()["labels"] == LABELS
            assert top("a") == sorted(LABELS)
            listed = httpx.get(f"{base}/v1/label-sets").json()["label_sets"]
            assert [s["name"] for s in listed] == ["a"]

            r = classify_big()
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage"
            no_temporaries()
            assert httpx.get(f"{base}/readyz").status_code == 200
            assert served_version(base)  # small uploads stay in memory: still served
            disk.release(proc.pid)
            if disk.mounted:  # the failed writes and the half-spooled upload gave their space back
                assert disk.free_bytes() == free

            disk.fill(proc.pid)
            disk.leave(proc.pid, 8192)  # the definition (~1 KB) fits, the matrix (20 KB) does not
            forty = [f"object number {i}" for i in range(40)]
            r = put("c", forty)
            assert r.status_code == 200, r.text
            assert r.json()["embeddings"]["source"] == "encoded"
            assert sorted(p.name for p in sets.glob("c.*")) == ["c.json"]  # no matrix on disk
            assert len(top("c")) == 5  # served from memory (top 5 of 40)
            no_temporaries()

            disk.release(proc.pid)
            assert put("d", ["cat", "dog"]).status_code == 200
            assert len(list(sets.glob("d.*.npy"))) == 1
            r = classify_big()
            assert r.status_code == 200, r.text
            no_temporaries()
            assert proc.poll() is None
        log = (tmp_path / "serve.log").read_text()
        if disk.mounted:  # (the fallback's file-size limit also stops the server's own log file)
            assert "cannot persist" in log and "no space left on a disk" in log
        assert "Traceback" not in log


# --- damaged label-set files -----------------------------------------------------------------------


def test_damaged_label_set_files_are_reported_or_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sets registered by one server, their files damaged, then read by a fresh server (a restart,
    or another replica sharing the folder)."""
    settings = server_settings(tmp_path)
    root = settings.label_sets_dir
    bad_json = {
        "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
        "garbage": lambda p: p.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(300))),
        "wrong-types": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "labels": [1, 2]})),
        "not-an-object": lambda p: p.write_text("[]"),
    }
    bad_npy: dict[str, Callable[[Path], object]] = {
        "npy-truncated": lambda p: p.write_bytes(p.read_bytes()[:200]),
        "npy-empty": lambda p: p.write_bytes(b""),
        "npy-shape": lambda p: np.save(p, np.load(p)[:-1]),
        "npy-float64": lambda p: np.save(p, np.load(p).astype(np.float64)),
        "npy-noise": lambda p: np.save(
            p, np.random.default_rng(0).standard_normal(np.load(p).shape, np.float32)
        ),
    }
    names = ["good", *bad_json, *bad_npy]
    before: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    with live_server(settings) as base:
        for i, name in enumerate(names):
            labels = [f"{lb} {i}" for lb in LABELS] + [f"thing {i}"]
            r = httpx.put(
                f"{base}/v1/label-sets/{name}", json={"labels": labels, "templates": "default"}, headers=ADMIN
            )
            assert r.status_code == 200, r.text
            (npy,) = root.glob(f"{name}.*.npy")
            r = classify(base, label_set=name)
            assert r.status_code == 200, r.text
            before[name] = (np.load(npy), r.json()["results"][0]["labels"])
    for name, damage in bad_json.items():
        damage(root / f"{name}.json")
    for name, damage in bad_npy.items():
        damage(next(root.glob(f"{name}.*.npy")))
    good_npy = next(root.glob("good.*.npy"))
    good_mtime = good_npy.stat().st_mtime_ns

    caplog.set_level("WARNING", logger="app.runtime.label_sets")
    with live_server(settings) as base:
        listed = [s["name"] for s in httpx.get(f"{base}/v1/label-sets").json()["label_sets"]]
        assert listed == sorted(["good", *bad_npy])  # the unreadable ones are left out, not fatal
        for name in bad_json:
            for r in (classify(base, label_set=name), httpx.get(f"{base}/v1/label-sets/{name}")):
                assert r.status_code == 503, r.text
                err = r.json()["error"]
                assert err["code"] == "label_set_unreadable" and f"'{name}'" in err["message"]
                assert "damaged" in err["message"]
            assert any(
                rec.levelname == "ERROR" and f"{name}.json" in rec.getMessage() for rec in caplog.records
            ), name
        for name in ["good", *bad_npy]:
            r = classify(base, label_set=name)
            assert r.status_code == 200, (name, r.text)
            got, (matrix, answer) = r.json()["results"][0]["labels"], before[name]
            assert [x["label"] for x in got] == [x["label"] for x in answer], name
            assert np.allclose([x["cosine"] for x in got], [x["cosine"] for x in answer], atol=1e-5)
            (npy,) = root.glob(f"{name}.*.npy")  # rebuilt (or untouched) and readable again
            assert np.allclose(np.load(npy), matrix, atol=1e-5), name
        for name in bad_npy:
            assert any(
                rec.levelname == "WARNING"
                and name in rec.getMessage()
                and "encoding the set again" in rec.getMessage()
                for rec in caplog.records
            ), name
        assert good_npy.stat().st_mtime_ns == good_mtime  # the intact matrix was read, not rebuilt
        # A damaged definition is repaired by registering the set again.
        r = httpx.put(f"{base}/v1/label-sets/truncated", json={"labels": LABELS}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert classify(base, label_set="truncated").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
    assert not [rec for rec in caplog.records if rec.levelname == "CRITICAL" or rec.exc_info]
