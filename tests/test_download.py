"""Tests of Utils.download against a local HTTP server on 127.0.0.1 (no other network traffic)."""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.conftest import REPO, WEIGHTS
from Utils import download as dl

PAYLOAD = os.urandom(200_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves; it records every request."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_after: Optional[int] = None
    fail_next: int = 0
    requests: list[dict] = field(default_factory=list)
    base: str = ""

    def url(self, path: str) -> str:
        return self.base + path


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            state.requests.append({"path": self.path, "range": self.headers.get("Range")})
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            if state.fail_next > 0:
                state.fail_next -= 1
                self.send_error(503)
                return
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng and not state.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-", rng)
                assert m, rng
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if state.cut_after is not None:
                body = body[: state.cut_after]
            self.wfile.write(body)
            self.wfile.flush()

    return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[ServerState]:
    state = ServerState(files={"/file.bin": PAYLOAD})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _fetch(url: str, dest: Path, **kw) -> Path:
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 5)
    kw.setdefault("backoff", 0.01)
    return dl.download_file(url, dest, **kw)


# --- (a) plain download -------------------------------------------------------------------


def test_fetches_file_and_checks_sum(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "file.bin"
    out = _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA)
    assert out == dest
    assert dl.sha256_file(dest) == PAYLOAD_SHA
    assert not dest.with_name("file.bin.part").exists()
    assert server.requests[-1]["range"] is None


def test_prefix_sum_accepted_and_present_file_skipped(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    _fetch(server.url("/file.bin"), dest, sha256_prefix=PAYLOAD_SHA[:8])
    n = len(server.requests)
    _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA)
    assert len(server.requests) == n, "a present, verified file must not be fetched again"


def test_present_file_with_wrong_sum_is_replaced(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD


# --- (b) interruption and resume ----------------------------------------------------------


def test_interrupted_transfer_leaves_part_then_resumes(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    server.cut_after = 70_000
    with pytest.raises(dl.DownloadError, match="file.bin"):
        _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA, retries=0)
    assert not dest.exists()
    assert part.stat().st_size == 70_000
    assert part.read_bytes() == PAYLOAD[:70_000]

    server.cut_after = None
    _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA, retries=0)
    assert server.requests[-1]["range"] == "bytes=70000-"
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_retry_resumes_within_one_call(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    server.fail_next = 1  # one 503, then the real answer
    _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_server_ignoring_range_restarts_from_zero(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * 5000)  # garbage: only a restart can fix it
    server.ignore_range = True
    _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA, retries=0)
    assert server.requests[-1]["range"] == "bytes=5000-"
    assert dest.read_bytes() == PAYLOAD


def test_oversized_part_gets_416_and_restarts(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))
    _fetch(server.url("/file.bin"), dest, sha256=PAYLOAD_SHA, retries=0)
    assert dest.read_bytes() == PAYLOAD


def test_404_is_not_retried(server: ServerState, tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        _fetch(server.url("/missing.bin"), tmp_path / "missing.bin", retries=3)
    assert len(server.requests) == 1
    assert not (tmp_path / "missing.bin").exists()


# --- (c) wrong sum -------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"sha256": "0" * 64}, {"sha256_prefix": "deadbeef"}])
def test_wrong_sum_is_refused(server: ServerState, tmp_path: Path, kw: dict) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.DownloadError) as info:
        _fetch(server.url("/file.bin"), dest, **kw)
    msg = str(info.value)
    assert "file.bin" in msg and PAYLOAD_SHA in msg and next(iter(kw.values())) in msg
    assert "\n" not in msg
    assert not dest.exists()
    assert not (tmp_path / "file.bin.part").exists()


# --- (d) command line ----------------------------------------------------------------------


def test_cli_url_override_downloads_into_root(server: ServerState, tmp_path: Path) -> None:
    override = f"EdgeSRN={server.url('/file.bin')}"
    rc = dl.main(["EdgeSRN", "--root", str(tmp_path), "--url-override", override, "--no-progress"])
    assert rc == 0
    assert (tmp_path / "Checkpoints" / "EdgeSRN" / "EdgeSRN_x4.pth").read_bytes() == PAYLOAD


def test_cli_subprocess_downloads_and_lists(server: ServerState, tmp_path: Path) -> None:
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    cmd = [sys.executable, "-m", "Utils.download", "--root", str(tmp_path), "--no-progress"]
    run = subprocess.run(
        cmd + ["SwinIR-S", "--url-override", f"swinir-s={server.url('/file.bin')}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert dl.entry_path("SwinIR-S", tmp_path).read_bytes() == PAYLOAD
    listing = subprocess.run(cmd + ["--list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    line = next(l for l in listing.stdout.splitlines() if l.startswith("SwinIR-S "))
    assert "present" in line and "missing" not in line
    assert re.search(r"^IMDN\s+missing", listing.stdout, re.M)


def test_cli_manual_entry_absent_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = dl.main(["EdgeSRN", "--root", str(tmp_path), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "pan.quark.cn" in err and str(tmp_path / "Checkpoints" / "EdgeSRN" / "EdgeSRN_x4.pth") in err


def test_cli_rejects_unknown_names(capsys: pytest.CaptureFixture) -> None:
    assert dl.main(["no-such-thing"]) == 2
    assert dl.main(["IMDN", "--url-override", "nope=http://127.0.0.1/x"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_cli_archive_entry_extracts_once(server: ServerState, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("DIV2K_valid_HR/0801.png", b"png-bytes")
    server.files["/valid.zip"] = buf.getvalue()
    override = f"DIV2K_valid_HR={server.url('/valid.zip')}"
    args = ["DIV2K_valid_HR", "--root", str(tmp_path), "--no-progress", "--url-override", override]
    assert dl.main(args) == 0
    assert (tmp_path / "Datasets" / "DIV2K_valid_HR" / "0801.png").read_bytes() == b"png-bytes"
    assert dl.entry_status("DIV2K_valid_HR", tmp_path) == "extracted"
    n = len(server.requests)
    assert dl.main(args + ["--remove-archive"]) == 0
    assert len(server.requests) == n, "a second run must do nothing"


def test_cli_verify_flags_bad_sum(tmp_path: Path) -> None:
    bad = dl.entry_path("IMDN", tmp_path)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the checkpoint")
    assert dl.main(["--verify", "IMDN", "--root", str(tmp_path)]) == 1
    assert dl.main(["--verify", "EdgeSRN", "--root", str(tmp_path)]) == 0


def test_catalogue_sum_of_a_real_checkpoint(server: ServerState, tmp_path: Path) -> None:
    src = WEIGHTS / "IMDN" / "IMDN_x4.pth"
    if not src.is_file():
        pytest.skip(f"needs {src} (shared data)")
    server.files["/IMDN_x4.pth"] = src.read_bytes()
    override = f"IMDN={server.url('/IMDN_x4.pth')}"
    rc = dl.main(["IMDN", "--root", str(tmp_path), "--no-progress", "--url-override", override])
    assert rc == 0
    assert dl.entry_status("IMDN", tmp_path) == "verified"


# --- (e) archives ----------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt", "..\\evil.txt"])
def test_zip_with_unsafe_member_is_refused(tmp_path: Path, bad: str) -> None:
    archive = _zip(tmp_path / "a.zip", {"good/first.txt": b"1", bad: b"evil"})
    out = tmp_path / "out"
    with pytest.raises(dl.UnsafeArchiveError, match="unsafe member"):
        dl.extract_archive(archive, out, progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert not (out / "good" / "first.txt").exists(), "nothing is written before all members pass"
    assert not any(p.name.endswith(".extracted") for p in tmp_path.rglob("*"))


def test_tar_with_unsafe_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(dl.UnsafeArchiveError):
        dl.extract_archive(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_tar_extracts_once(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("benchmark/Set5/HR/baby.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    out = tmp_path / "out"
    dl.extract_archive(archive, out, progress=False)
    target = out / "benchmark" / "Set5" / "HR" / "baby.png"
    assert target.read_bytes() == b"abc"
    target.unlink()
    dl.extract_archive(archive, out, progress=False)
    assert not target.exists(), "the marker makes a second extraction a no-op"


# --- catalogue -------------------------------------------------------------------------------


def test_catalogue_is_well_formed() -> None:
    for e in dl.CATALOGUE.values():
        assert e.urls or e.manual, e.name
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
        assert e.sha256_prefix is None or re.fullmatch(r"[0-9a-f]{8}", e.sha256_prefix), e.name
        assert not e.dest.startswith("/") and ".." not in e.dest.split("/"), e.name
        assert e.dest.split("/")[0] in {"Checkpoints", "Datasets", "Datasets2023"}, e.name
    assert {"weights", "div2k", "benchmarks", "all"} <= set(dl.GROUPS)
    assert [e.name for e in dl.select(["div2k"])] == [
        "DIV2K_train_HR", "DIV2K_valid_HR", "DIV2K_train_LR_bicubic_X4", "DIV2K_valid_LR_bicubic_X4"
    ]
    assert len(dl.select(["all"])) == len(dl.CATALOGUE)


@pytest.mark.parametrize(
    "name, shared",
    [
        ("DTKD-RFDN", "SRDTKD/DTKD-RFDN.pth"),
        ("DTKD-RFDN-perceptual", "SRDTKD/DTKD-RFDN-perceptual.pth"),
        ("DTKD-LBNet", "SRDTKD/DTKD-LBNet.pth"),
        ("DTKD-LBNet-perceptual", "SRDTKD/DTKD-LBNet-perceptual.pth"),
        ("MTKDSR-RFDN", "MTKDSR/RFDN_x4.pth"),
        ("IMDN", "IMDN/IMDN_x4.pth"),
        ("RFDN_AIM", "RFDN/RFDN_AIM.pth"),
        ("LBNet-T", "LBNet/LBNet-T_X4.pt"),
        ("PAN", "PAN/PANx4_DF2K.pth"),
        ("LPIPS-alex", "perceptual/lpips/v0.1/alex.pth"),
        ("NIQE", "perceptual/niqe_pris_params.npz"),
    ],
)
def test_catalogue_sums_match_shared_files(name: str, shared: str) -> None:
    path = WEIGHTS / shared
    if not path.is_file():
        pytest.skip(f"needs {path} (shared data)")
    assert dl.CATALOGUE[name].sha256 == dl.sha256_file(path)
