"""Download the datasets and published checkpoints DTKD uses, with resumable, verified transfers.

``python -m Utils.download --list`` shows the catalogue and what is already in place;
``python -m Utils.download IMDN VGG19 div2k`` fetches entries or groups (``weights``, ``students``,
``baselines``, ``teachers``, ``backbones``, ``div2k``, ``div2k_x2``, ``div2k_x3``, ``benchmarks``,
``all``) under ``--root`` (the repository by default): weights to ``Checkpoints/<Model>/<file>``, DIV2K to ``Datasets/`` and
test sets to ``Datasets2023/``. ``--url-override NAME=URL`` points an entry at a mirror (``file://``
URLs work too), ``--verify`` checks the files already present against their sums.

Transfers stream to ``<file>.part``, resume it with an HTTP Range request, and move it onto the
final name only after its sha256 (or the 8-hex prefix that torchvision and BasicSR put in their
file names) matches, so the final name never holds a partial or unverified file. Some files live
where no script can fetch them (the SRDTKD authors' Quark drive, Google Drive folders): for those
the catalogue records where to get them, where to put them and, when known, their sum.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence, Union

from tqdm import tqdm

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
REPO_ROOT = Path(__file__).resolve().parents[1]
USER_AGENT = "DTKD-download/1.0 (python-urllib)"
CHUNK_SIZE = 1 << 20
TRANSIENT_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})

__all__ = [
    "CATALOGUE",
    "GROUPS",
    "DownloadError",
    "Entry",
    "ManualDownloadRequired",
    "UnsafeArchiveError",
    "download_file",
    "entry_path",
    "entry_status",
    "extract_archive",
    "fetch",
    "main",
    "select",
    "sha256_file",
]


class DownloadError(RuntimeError):
    """A download, verification or extraction that failed; the message is one line."""


class ManualDownloadRequired(DownloadError):
    """The file cannot be fetched by script; the message says where to get it and where to put it."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the destination (absolute path, ``..``, link, device)."""


class _TransientError(Exception):
    """A failure worth retrying: lost connection, timeout, short body, HTTP 5xx or 429."""


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One downloadable item.

    ``dest`` is a POSIX path relative to the root. ``url`` is the primary source and ``mirrors``
    are tried after it; an entry without any URL is manual-only. ``sha256`` is the full sum when
    known, ``sha256_prefix`` the leading hex digits when only those are published (torchvision and
    BasicSR file names). ``extract`` unpacks the archive into ``dest``'s folder. ``folder`` marks an
    entry that is a directory put in place by hand. ``manual`` tells a user how to get it by hand.
    """

    name: str
    groups: tuple[str, ...]
    dest: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    extract: bool = False
    folder: bool = False
    manual: Optional[str] = None
    mirrors: tuple[str, ...] = ()
    note: str = ""

    @property
    def urls(self) -> tuple[str, ...]:
        """Primary URL then mirrors, without the missing ones."""
        return tuple(u for u in (self.url, *self.mirrors) if u)


_QUARK = "https://pan.quark.cn/s/7074834cfec9"
_QUARK_NOTE = (
    f"The SRDTKD authors publish it on a Quark drive ({_QUARK}, linked from the SRDTKD README), "
    "which scripts cannot fetch: download it there by hand."
)
# Commits of the authors' GitHub repositories whose trees held copies of the student weights
# (found in the public code index); the sum decides whether a copy is the published file.
_SRDTKD_RAW = "https://raw.githubusercontent.com/lizhangray/SRDTKD/710d6d0ff3b801d71882b51c5d8287c2e198a2db"
_MTKDSR_RAW = "https://raw.githubusercontent.com/lizhangray/MTKDSR/2c2f28d128f57a13b4f97a8d2beb71cfa91dcd52"
_DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K"
_TORCH_MODELS = "https://download.pytorch.org/models"
_LPIPS_RAW = "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1"


def _student(name: str, model: str, sha256: str, extra_mirrors: tuple[str, ...] = ()) -> Entry:
    file = f"{name}.pth"
    return Entry(
        name=name,
        groups=("weights", "students"),
        dest=f"Checkpoints/{model}/{file}",
        sha256=sha256,
        manual=_QUARK_NOTE,
        mirrors=(f"{_SRDTKD_RAW}/Checkpoints/{model}/{file}", *extra_mirrors),
        note="DTKD student (SRDTKD authors); Quark drive, GitHub history copy tried by sum",
    )


def _div2k(name: str, group: str = "div2k") -> Entry:
    return Entry(
        name=name,
        groups=(group,),
        dest=f"Datasets/{name}.zip",
        url=f"{_DIV2K}/{name}.zip",
        extract=True,
        note="official ETH Zurich archive; sum not published",
    )


_ENTRIES: tuple[Entry, ...] = (
    # --- DTKD students (SRDTKD) -------------------------------------------------------------
    _student("DTKD-RFDN", "RFDN", "5338442015cf6c2944c25c88166b36812affa72e309f7273e8cea519764a27ee"),
    # Byte-identical to the same group's 2022 MTKDSR.pth (see ../shared/data/README.md).
    _student(
        "DTKD-RFDN-perceptual",
        "RFDN",
        "d5873cdb15d04c0d4a1a7cdf30b396e1c7fabce152241b13ee34c74c9e9b38da",
        (f"{_MTKDSR_RAW}/Checkpoints/RFDN/MTKDSR.pth",),
    ),
    _student("DTKD-LBNet", "LBNet", "b3ed98d7d13d3a211efe4d62bd45f6f21f600e268df7a9b0037350755ee6b21e"),
    _student(
        "DTKD-LBNet-perceptual", "LBNet", "56466a96ccd8b86261536b89cd8318a7cf91e9278e9e43dae900f4fc82021e76"
    ),
    # --- teachers ---------------------------------------------------------------------------
    Entry(
        name="EdgeSRN",
        groups=("weights", "teachers"),
        dest="Checkpoints/EdgeSRN/EdgeSRN_x4.pth",
        manual=(
            f"The SRDTKD README lists EdgeSRN_x4.pth on the authors' Quark drive ({_QUARK}), which "
            "scripts cannot fetch; its sum is unknown. Or train it with this project (main.py)."
        ),
        note="perceptual teacher; Quark drive only, sum unknown",
    ),
    Entry(
        name="SwinIR-S",
        groups=("weights", "teachers"),
        dest="Checkpoints/SwinIR/002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth",
        url=(
            "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
            "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth"
        ),
        note="official SwinIR release v0.0; sum not published",
    ),
    Entry(
        name="IMDN",
        groups=("weights", "teachers", "baselines"),
        dest="Checkpoints/IMDN/IMDN_x4.pth",
        url="https://raw.githubusercontent.com/Zheng222/IMDN/master/checkpoints/IMDN_x4.pth",
        sha256="e660c38221147217a136debeb99eb304d62d9c0f73ac421ed66281b619719714",
        note="official Zheng222/IMDN checkpoint (default fidelity teacher)",
    ),
    *(
        Entry(
            name=f"IMDN-x{scale}",
            groups=("weights", "teachers", "baselines"),
            dest=f"Checkpoints/IMDN/IMDN_x{scale}.pth",
            url=f"https://raw.githubusercontent.com/Zheng222/IMDN/master/checkpoints/IMDN_x{scale}.pth",
            sha256=sha,
            note=f"official Zheng222/IMDN x{scale} checkpoint (fidelity teacher at x{scale})",
        )
        for scale, sha in (
            (2, "740b39653592bd3f49955a21cd9e16f2d37f2c413368cc09327601b8fbe42ce1"),
            (3, "11b1716a19bc16e5e353e1db798d476169338e631eb170c82d765559888cb028"),
        )
    ),
    Entry(
        name="ESRGAN",
        groups=("weights", "baselines"),
        dest="Checkpoints/ESRGAN/RRDB_ESRGAN_x4.pth",
        manual=(
            "xinntao/ESRGAN publishes RRDB_ESRGAN_x4.pth only in a Google Drive folder "
            "(https://drive.google.com/drive/u/0/folders/17VYV_SoZZesU6mbxz2dMAIccSSlqLecY) and on "
            "Baidu (https://pan.baidu.com/s/1-Lh6ma-wXzfH8NqeBtPaFQ); its sum is unknown. "
            "The entry ESRGAN-BasicSR fetches BasicSR's converted copy of the official model."
        ),
        note="official ESRGAN (old key names); Google Drive only, sum unknown",
    ),
    Entry(
        name="ESRGAN-BasicSR",
        groups=("weights", "baselines"),
        dest="Checkpoints/ESRGAN/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth",
        url=(
            "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.1/"
            "ESRGAN_SRx4_DF2KOST_official-ff704c30.pth"
        ),
        sha256_prefix="ff704c30",
        note="BasicSR's conversion of the official ESRGAN x4 (BasicSR key names, under 'params')",
    ),
    # --- baselines --------------------------------------------------------------------------
    Entry(
        name="MTKDSR-RFDN",
        groups=("weights", "baselines"),
        dest="Checkpoints/RFDN/RFDN_x4.pth",
        url=f"{_MTKDSR_RAW}/Checkpoints/RFDN/RFDN_x4.pth",
        sha256="81c218a0e844b24aa9e089595d440d7f3eabf2c0777711b3bbcd80d245faf16a",
        note="same group's RFDN (nf 64) without distillation, lizhangray/MTKDSR",
    ),
    Entry(
        name="RFDN_AIM",
        groups=("weights", "baselines"),
        dest="Checkpoints/RFDN_AIM/RFDN_AIM.pth",
        url="https://raw.githubusercontent.com/njulj/RFDN/master/trained_model/RFDN_AIM.pth",
        sha256="11af8ec8ebd68689e90ef1e29044f9804c72d3bd9f7573820b7b26035782760c",
        note="official njulj/RFDN AIM 2020 checkpoint (nf 50, 0-255 input)",
    ),
    Entry(
        name="LBNet-T",
        groups=("weights", "baselines"),
        dest="Checkpoints/LBNet_tiny/LBNet-T_X4.pt",
        url="https://raw.githubusercontent.com/wzx0826/LBNet/main/test_model/LBNet-T/LBNet-T_X4.pt",
        sha256="5e5c2475619523fda3efbf077b19c709571724a2b60780f8c73c61408d827366",
        note="official wzx0826/LBNet checkpoint (path from its README)",
    ),
    Entry(
        name="PAN",
        groups=("weights", "baselines"),
        dest="Checkpoints/PAN/PANx4_DF2K.pth",
        url=(
            "https://raw.githubusercontent.com/zhaohengyuan1/PAN/master/"
            "experiments/pretrained_models/PANx4_DF2K.pth"
        ),
        sha256="739fab99ee7b7058dab4d1b84aa2869bb9fc3995a1c08789c20355bee943833c",
        note="official zhaohengyuan1/PAN checkpoint",
    ),
    # --- backbones and perceptual-metric parameters -----------------------------------------
    Entry(
        name="VGG19",
        groups=("weights", "backbones"),
        dest="Checkpoints/VGG19/vgg19-dcbbb0fc.pth",
        url=f"{_TORCH_MODELS}/vgg19-dcbbb0fc.pth",
        sha256_prefix="dcbbb0fc",
        note="torchvision ImageNet VGG19 (perceptual loss)",
    ),
    Entry(
        name="AlexNet",
        groups=("weights", "backbones"),
        dest="Checkpoints/AlexNet/alexnet-owt-7be5be79.pth",
        url=f"{_TORCH_MODELS}/alexnet-owt-7be5be79.pth",
        sha256_prefix="7be5be79",
        note="torchvision ImageNet AlexNet (LPIPS backbone)",
    ),
    *(
        Entry(
            name=f"LPIPS-{net}",
            groups=("weights", "backbones"),
            dest=f"Checkpoints/LPIPS/v0.1/{net}.pth",
            url=f"{_LPIPS_RAW}/{net}.pth",
            sha256=sha,
            note="LPIPS v0.1 linear head (richzhang/PerceptualSimilarity)",
        )
        for net, sha in (
            ("alex", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
            ("vgg", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
            ("squeeze", "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76"),
        )
    ),
    Entry(
        name="NIQE",
        groups=("weights", "backbones"),
        dest="Checkpoints/NIQE/niqe_pris_params.npz",
        url="https://raw.githubusercontent.com/XPixelGroup/BasicSR/master/basicsr/metrics/niqe_pris_params.npz",
        sha256="2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
        note="NIQE pristine model as distributed with BasicSR",
    ),
    # --- DIV2K --------------------------------------------------------------------------------
    _div2k("DIV2K_train_HR"),
    _div2k("DIV2K_valid_HR"),
    _div2k("DIV2K_train_LR_bicubic_X4"),
    _div2k("DIV2K_valid_LR_bicubic_X4"),
    # x2 and x3 LR (groups div2k_x2, div2k_x3: only who trains at those scales needs them)
    *(_div2k(f"DIV2K_{part}_LR_bicubic_X{scale}", f"div2k_x{scale}")
      for scale in (2, 3) for part in ("train", "valid")),
    # --- test sets ----------------------------------------------------------------------------
    Entry(
        name="Datasets2023",
        groups=("benchmarks",),
        dest="Datasets2023/GTmod12_LRx4",
        folder=True,
        manual=(
            "The SRDTKD authors share Set5, Set14, BSD100, Urban100, Manga109 and RealSRSet in the "
            "Datasets2023 layout in a Google Drive folder "
            "(https://drive.google.com/drive/folders/1XsTVrkrTYga0-E_jfoavi2x07qWw2opa): put its GT/, "
            "GTmod12/, GTmod12_LRx4/ and RealSRSet/ folders under Datasets2023/. The SwinIR authors' "
            "copy of the five sets is in "
            "https://drive.google.com/drive/folders/1B3DJGQKB6eNdwuQIhdskA64qUuVKLZ9u ; "
            "python -m Utils.prepare_data builds the layout from HR images."
        ),
        note="five benchmark sets, Datasets2023 layout; Google Drive only",
    ),
    Entry(
        name="benchmark-EDSR",
        groups=("benchmarks",),
        dest="Datasets2023/benchmark.tar",
        url="https://cv.snu.ac.kr/research/EDSR/benchmark.tar",
        extract=True,
        note="EDSR benchmark archive (HR + LR_bicubic, EDSR layout); sum not published",
    ),
    Entry(
        name="RealSRSet",
        groups=("benchmarks",),
        dest="Datasets2023/RealSRSet+5images.zip",
        url="https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/RealSRSet+5images.zip",
        extract=True,
        note="real LR images without ground truth (SwinIR release); sum not published",
    ),
)

CATALOGUE: dict[str, Entry] = {e.name: e for e in _ENTRIES}
GROUPS: tuple[str, ...] = ("all",) + tuple(dict.fromkeys(g for e in _ENTRIES for g in e.groups))


# --------------------------------------------------------------------------------------------
# Sums
# --------------------------------------------------------------------------------------------


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_hex(value: Optional[str], what: str, length: Optional[int] = None) -> Optional[str]:
    if value is None:
        return None
    v = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", v) or (length is not None and len(v) != length) or len(v) > 64:
        size = f" of length {length}" if length else ""
        raise ValueError(f"{what} must be hexadecimal{size}, got {value!r}")
    return v


def _sum_matches(actual: str, sha256: Optional[str], prefix: Optional[str]) -> bool:
    return (sha256 is None or actual == sha256) and (prefix is None or actual.startswith(prefix))


def _expected_text(sha256: Optional[str], prefix: Optional[str]) -> str:
    return sha256 if sha256 is not None else f"{prefix}..."


# --------------------------------------------------------------------------------------------
# Transfer
# --------------------------------------------------------------------------------------------


def _parse_content_range(value: Optional[str]) -> Optional[int]:
    """Start offset of a ``Content-Range: bytes START-END/TOTAL`` header, or None."""
    if not value:
        return None
    m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value)
    return int(m.group(1)) if m else None


def _open(url: str, offset: int, timeout: float):
    """Open ``url`` (asking for bytes from ``offset`` on when > 0); map errors to our kinds."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return None  # the .part is not a prefix the server can continue: caller restarts
        if e.code in TRANSIENT_HTTP_CODES:
            raise _TransientError(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from e
    except ValueError as e:
        raise DownloadError(f"invalid URL {url!r}: {e}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, FileNotFoundError):
            raise DownloadError(f"not found: {url}") from e
        raise _TransientError(f"cannot connect: {reason}") from e


def _transfer(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``part``, continuing an existing ``part`` with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, timeout)
    if resp is not None and offset and getattr(resp, "status", None) == 206:
        start = _parse_content_range(resp.headers.get("Content-Range"))
        if start != offset:
            log.info("%s: server answered the range request from byte %s, not %d", part.name, start, offset)
            resp.close()
            resp = None
    if resp is None:  # 416 or a range we cannot use: start again from zero
        log.info("%s: cannot continue the partial file; starting again from zero", part.name)
        part.unlink()
        offset = 0
        resp = _open(url, 0, timeout)
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// responses carry no status
        if status == 206:
            if _parse_content_range(resp.headers.get("Content-Range")) != offset:
                raise _TransientError("server sent a partial response that does not start where asked")
            mode = "ab"
            if offset:
                log.info("%s: resuming at byte %d", part.name, offset)
        elif status == 200:
            if offset:
                log.info("%s: server ignored the range request; starting again from zero", part.name)
            offset, mode = 0, "wb"
        else:
            raise DownloadError(f"unexpected HTTP status {status} for {url}")
        length_header = resp.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        total = offset + length if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")],
            disable=not progress,
            leave=False,
        ) as bar:
            try:
                while True:
                    chunk = resp.read(CHUNK_SIZE)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _TransientError(f"connection lost after {offset + received} bytes: {e}") from e
            finally:
                f.flush()
                os.fsync(f.fileno())
        if length is not None and received < length:
            raise _TransientError(f"connection closed after {offset + received} of {total} bytes")


def download_file(
    url: str,
    dest: PathLike,
    sha256: Optional[str] = None,
    sha256_prefix: Optional[str] = None,
    *,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to ``dest + ".part"``; an existing ``.part`` is continued with an HTTP Range
    request (a server that answers 200 instead makes it start again from zero). When a sum is
    given the ``.part`` must match it before it is moved onto ``dest``; a mismatch deletes the
    ``.part`` and raises. An existing ``dest`` that matches (or any ``dest`` when no sum is given)
    is kept and nothing is fetched. Lost connections, timeouts, HTTP 5xx and 429 are retried
    ``retries`` times, waiting ``backoff * 2**attempt`` seconds; other HTTP errors raise at once.
    """
    dest = Path(dest)
    sha256 = _check_hex(sha256, "sha256", 64)
    sha256_prefix = _check_hex(sha256_prefix, "sha256_prefix")
    checked = sha256 is not None or sha256_prefix is not None
    if dest.is_file():
        if not checked:
            log.info("%s: present (no sum to check), skipped", dest)
            return dest
        actual = sha256_file(dest)
        if _sum_matches(actual, sha256, sha256_prefix):
            log.info("%s: present and verified, skipped", dest)
            return dest
        log.warning(
            "%s: present but its sha256 %s does not match %s; downloading it again",
            dest, actual, _expected_text(sha256, sha256_prefix),
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("%s: downloading %s", dest, url)
    attempt = 0
    while True:
        try:
            _transfer(url, part, progress=progress, timeout=timeout)
            break
        except _TransientError as e:
            if attempt >= retries:
                raise DownloadError(
                    f"{dest.name}: download from {url} failed after {attempt + 1} attempt(s): {e} "
                    f"(partial data kept in {part.name}; run again to resume)"
                ) from e
            delay = backoff * (2 ** attempt)
            attempt += 1
            log.warning("%s: %s; retry %d/%d in %.1f s", dest.name, e, attempt, retries, delay)
            time.sleep(delay)
        except DownloadError as e:
            raise DownloadError(f"{dest.name}: {e}") from e
    if checked:
        actual = sha256_file(part)
        if not _sum_matches(actual, sha256, sha256_prefix):
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{dest.name}: sha256 mismatch: expected {_expected_text(sha256, sha256_prefix)}, "
                f"got {actual} (download deleted)"
            )
    os.replace(part, dest)
    log.info("%s: done%s", dest, " and verified" if checked else "")
    return dest


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _marker_path(archive: Path, dest_dir: Path) -> Path:
    return dest_dir / f".{archive.name}.extracted"


def _check_member_name(name: str, archive: Path) -> None:
    """Refuse absolute member names, drive letters and ``..`` components."""
    unified = name.replace("\\", "/")
    parts = PurePosixPath(unified).parts
    if (
        not unified
        or unified.startswith("/")
        or re.match(r"^[A-Za-z]:", unified)
        or any(p == ".." for p in parts)
    ):
        raise UnsafeArchiveError(f"{archive.name}: refusing unsafe member {name!r} (absolute path or '..')")


def extract_archive(archive: PathLike, dest_dir: PathLike, *, progress: bool = True) -> Path:
    """Unpack a zip or tar ``archive`` into ``dest_dir``, once.

    Every member is checked before anything is written: absolute paths, ``..`` components, links
    and special files are refused. A marker ``dest_dir/.<archive name>.extracted`` is written on
    success, and its presence makes later calls return at once.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    marker = _marker_path(archive, dest_dir)
    if marker.exists():
        log.info("%s: already extracted into %s, skipped", archive.name, dest_dir)
        return dest_dir
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive not found")
    dest_dir.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member_name(info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"{archive.name}: refusing link member {info.filename!r}")
            bar = dict(desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False)
            for info in tqdm(infos, **bar):
                zf.extract(info, dest_dir)
        count = len(infos)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member_name(m.name, archive)
                if not (m.isfile() or m.isdir()):
                    raise UnsafeArchiveError(f"{archive.name}: refusing link or special member {m.name!r}")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            bar = dict(desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False)
            for m in tqdm(members, **bar):
                tf.extract(m, dest_dir, **kwargs)
        count = len(members)
    else:
        raise DownloadError(f"{archive.name}: neither a zip nor a tar archive")
    tmp = marker.with_name(marker.name + ".tmp")
    info = {"archive": archive.name, "size": archive.stat().st_size, "members": count}
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, marker)
    log.info("%s: extracted %d members into %s", archive.name, count, dest_dir)
    return dest_dir


# --------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------


def _root(root: Optional[PathLike]) -> Path:
    return Path(root) if root is not None else REPO_ROOT


def _entry(name_or_entry: Union[str, Entry]) -> Entry:
    if isinstance(name_or_entry, Entry):
        return name_or_entry
    found = _lookup(name_or_entry)
    if found is None:
        raise KeyError(f"unknown download entry {name_or_entry!r} (python -m Utils.download --list)")
    return found


def _lookup(name: str) -> Optional[Entry]:
    if name in CATALOGUE:
        return CATALOGUE[name]
    lowered = {k.lower(): v for k, v in CATALOGUE.items()}
    return lowered.get(name.lower())


def entry_path(name: Union[str, Entry], root: Optional[PathLike] = None) -> Path:
    """Where an entry's file (or archive, or folder) lives under ``root``."""
    return _root(root) / PurePosixPath(_entry(name).dest)


def _manual_message(entry: Entry, root: Path) -> str:
    where = root / PurePosixPath(entry.dest)
    has_sum = entry.sha256 is not None or entry.sha256_prefix is not None
    sum_text = f" (sha256 {_expected_text(entry.sha256, entry.sha256_prefix)})" if has_sum else ""
    put = f"When done, {where} must exist" if entry.folder else f"Put the file at {where}{sum_text}"
    return (
        f"{entry.name}: manual download needed. {entry.manual or 'No download source is known.'} "
        f"{put}; check with: python -m Utils.download --verify {entry.name}"
    )


def entry_status(name: Union[str, Entry], root: Optional[PathLike] = None) -> str:
    """``verified``, ``present``, ``extracted``, ``BAD SUM``, ``partial`` or ``missing`` (plus a remark)."""
    entry, base = _entry(name), _root(root)
    path = base / PurePosixPath(entry.dest)
    if entry.folder:
        return "present" if path.is_dir() and any(path.iterdir()) else "missing"
    if entry.extract and _marker_path(path, path.parent).exists():
        return "extracted"
    if path.is_file():
        if entry.sha256 is None and entry.sha256_prefix is None:
            state = "present"
        else:
            good = _sum_matches(sha256_file(path), entry.sha256, entry.sha256_prefix)
            state = "verified" if good else "BAD SUM"
        return f"{state}, not extracted" if entry.extract else state
    if path.with_name(path.name + ".part").exists():
        return "partial"
    return "missing"


def fetch(
    name: Union[str, Entry],
    root: Optional[PathLike] = None,
    *,
    url: Optional[str] = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30,
    remove_archive: bool = False,
) -> Path:
    """Make an entry available under ``root`` and return its path (the folder for archives).

    ``url`` replaces the entry's sources (a mirror or a local ``file://`` copy). Sources are tried
    in order; an entry whose sources all fail, or that has none, raises
    :class:`ManualDownloadRequired` when the catalogue says how to get it by hand, else
    :class:`DownloadError`.
    """
    entry, base = _entry(name), _root(root)
    path = base / PurePosixPath(entry.dest)
    urls = (url,) if url else entry.urls
    if entry.folder:
        if entry_status(entry, base) == "present":
            return path
        raise ManualDownloadRequired(_manual_message(entry, base))
    if entry.extract and _marker_path(path, path.parent).exists():
        log.info("%s: already extracted into %s, skipped", entry.name, path.parent)
        return path.parent
    if not urls:
        if path.is_file():
            if entry.sha256 is None and entry.sha256_prefix is None:
                return path
            actual = sha256_file(path)
            if _sum_matches(actual, entry.sha256, entry.sha256_prefix):
                return path
            expected = _expected_text(entry.sha256, entry.sha256_prefix)
            raise DownloadError(f"{path}: sha256 mismatch: expected {expected}, got {actual}")
        raise ManualDownloadRequired(_manual_message(entry, base))
    errors: list[str] = []
    for source in urls:
        try:
            download_file(
                source, path, entry.sha256, entry.sha256_prefix,
                progress=progress, retries=retries, timeout=timeout,
            )
            break
        except DownloadError as e:
            errors.append(str(e))
            if len(urls) > 1:
                log.warning("%s: %s", entry.name, e)
    else:
        if entry.manual:
            raise ManualDownloadRequired(f"{errors[-1]}. {_manual_message(entry, base)}")
        raise DownloadError(errors[-1] if len(errors) == 1 else " | ".join(errors))
    if entry.extract:
        extract_archive(path, path.parent, progress=progress)
        if remove_archive:
            path.unlink()
            log.info("%s: archive removed after extraction", path)
        return path.parent
    return path


def select(names: Iterable[str]) -> list[Entry]:
    """Entries named directly or through a group (``all``, ``weights``, ...), in catalogue order."""
    wanted: set[str] = set()
    group_names = {g.lower(): g for g in GROUPS}
    for raw in names:
        entry = _lookup(raw)
        if entry is not None:
            wanted.add(entry.name)
        elif raw.lower() in group_names:
            group = group_names[raw.lower()]
            wanted.update(e.name for e in _ENTRIES if group == "all" or group in e.groups)
        else:
            raise KeyError(f"unknown entry or group {raw!r} (groups: {', '.join(GROUPS)}; see --list)")
    return [e for e in _ENTRIES if e.name in wanted]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _source_text(entry: Entry, override: Optional[str]) -> str:
    if override:
        return "override"
    if not entry.urls:
        return "manual"
    host = urllib.parse.urlsplit(entry.urls[0]).netloc or entry.urls[0]
    extra = f" +{len(entry.urls) - 1}" if len(entry.urls) > 1 else ""
    return host + extra + (" (+manual)" if entry.manual else "")


def _print_table(entries: Sequence[Entry], root: Path, overrides: dict[str, str]) -> None:
    rows = [("NAME", "STATUS", "SHA256", "SOURCE", "DEST")]
    for e in entries:
        if e.sha256:
            sum_text = e.sha256[:12] + "..."
        else:
            sum_text = f"{e.sha256_prefix}..(prefix)" if e.sha256_prefix else "-"
        rows.append((e.name, entry_status(e, root), sum_text, _source_text(e, overrides.get(e.name)), e.dest))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print(f"root: {root}")


def _parse_overrides(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, url = v.partition("=")
        entry = _lookup(name.strip())
        if not sep or not url.strip():
            raise ValueError(f"--url-override expects NAME=URL, got {v!r}")
        if entry is None:
            raise ValueError(f"--url-override names an unknown entry {name!r}")
        if urllib.parse.urlsplit(url.strip()).scheme not in ("http", "https", "ftp", "file"):
            raise ValueError(f"--url-override {name}: not an http(s), ftp or file URL: {url!r}")
        out[entry.name] = url.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.download``."""
    p = argparse.ArgumentParser(
        prog="python -m Utils.download",
        description="Download DTKD datasets and checkpoints (resumable, sha256-verified).",
    )
    p.add_argument("names", nargs="*", help=f"entries or groups ({', '.join(GROUPS)})")
    p.add_argument("--list", action="store_true", help="show the catalogue and what is present/verified")
    p.add_argument("--verify", action="store_true", help="check the files already present; download nothing")
    p.add_argument("--root", type=Path, default=REPO_ROOT,
                   help="folder holding Checkpoints/, Datasets/, Datasets2023/ (default: the repository)")
    p.add_argument("--url-override", action="append", default=[], metavar="NAME=URL",
                   help="fetch NAME from URL instead, e.g. a mirror or file:///path (repeatable)")
    p.add_argument("--retries", type=int, default=3, help="retries of a transient failure (default 3)")
    p.add_argument("--timeout", type=float, default=30, help="network timeout in seconds (default 30)")
    p.add_argument("--remove-archive", action="store_true", help="delete archives once extracted")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 something unavailable, 2 usage)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        overrides = _parse_overrides(args.url_override)
        if args.names:
            entries: Optional[list[Entry]] = select(args.names)
        else:
            entries = list(_ENTRIES) if (args.list or args.verify) else None
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if entries is None:
        print("error: name entries or groups to download, or use --list (see --help)", file=sys.stderr)
        return 2
    root: Path = args.root
    if args.list:
        _print_table(entries, root, overrides)
        return 0
    if args.verify:
        bad = 0
        for e in entries:
            status = entry_status(e, root)
            if "BAD SUM" in status:
                bad += 1
                print(f"error: {entry_path(e, root)}: sha256 does not match the catalogue", file=sys.stderr)
            else:
                print(f"{e.name}: {status}")
        return 1 if bad else 0
    failed: list[str] = []
    for e in entries:
        try:
            path = fetch(
                e, root, url=overrides.get(e.name), progress=not args.no_progress,
                retries=args.retries, timeout=args.timeout, remove_archive=args.remove_archive,
            )
            print(f"{e.name}: ok -> {path}")
        except DownloadError as err:
            failed.append(e.name)
            print(f"error: {err}", file=sys.stderr)
    if failed:
        print(f"error: not available: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
