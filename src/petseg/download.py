"""Download the Oxford-IIIT Pet archives and extract them safely into the official layout.

Layout left in ``root`` (what the dataset code reads)::

    root/images/*.jpg
    root/annotations/trimaps/*.png
    root/annotations/trainval.txt
    root/annotations/test.txt

"Complete" is decided from that layout alone (see ``is_complete``), with no marker file: a copy the user
extracted by hand (the official host is not reachable from everywhere) counts as complete too. This module
never leaves a half layout behind, because each archive is extracted into a scratch folder and its
top-level folder is then moved into ``root`` with one rename.

Work files live in ``root/.downloads``:

* ``<name>.part`` while downloading; kept on a network error so the next attempt (or call) resumes it with an
  HTTP ``Range`` request;
* ``<name>`` once its MD5 is verified. An archive already there is verified and used without any network
  access, so users without access to the official host can drop the two archives there by hand;
* ``<name>.extract/`` while extracting.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path, PureWindowsPath

from tqdm import tqdm

from petseg.errors import PetsegError

OFFICIAL_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# Published MD5s (the ones torchvision's OxfordIIITPet checks).
ARCHIVES: dict[str, str] = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
# The top-level folder each archive holds; only that folder is moved into root.
_ARCHIVE_DIRS = {"images.tar.gz": "images", "annotations.tar.gz": "annotations"}

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
# Waits before the 2nd and 3rd attempt; cut connections are common on an ~800 MB download.
_RETRY_DELAYS_S: tuple[float, ...] = (2.0, 5.0)
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.10.12 / 3.11.4
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _images_done(root: Path) -> bool:
    return _nonempty_dir(root / "images")


def _annotations_done(root: Path) -> bool:
    ann = root / "annotations"
    return (
        _nonempty_dir(ann / "trimaps") and (ann / "trainval.txt").is_file() and (ann / "test.txt").is_file()
    )


_DONE: dict[str, Callable[[Path], bool]] = {
    "images.tar.gz": _images_done,
    "annotations.tar.gz": _annotations_done,
}


def is_complete(root: str | Path) -> bool:
    """True if ``root`` holds ``images/`` (non-empty), ``annotations/trimaps/`` (non-empty),
    ``annotations/trainval.txt`` and ``annotations/test.txt``."""
    root = Path(root)
    return all(done(root) for done in _DONE.values())


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read in chunks so large archives do not need to fit in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_oxford_pet(
    root: str | Path,
    base_url: str = OFFICIAL_BASE_URL,
    progress: bool = True,
    checksums: dict[str, str] | None = None,
    keep_archives: bool = False,
) -> None:
    """Make ``root`` hold the Oxford-IIIT Pet dataset in its official layout.

    Does nothing (no network access) when ``is_complete(root)``. Otherwise fetches the missing archives
    from ``base_url``, verifies their MD5 (``checksums`` overrides ``ARCHIVES``), extracts them safely and
    deletes them unless ``keep_archives``. Raises ``PetsegError`` on network failure, checksum mismatch or
    an unsafe/unexpected archive.
    """
    root = Path(root)
    if is_complete(root):
        return
    expected = {**ARCHIVES, **(checksums or {})}
    work = root / ".downloads"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PetsegError(f"cannot create dataset folder {work}: {e}") from None

    for name in ARCHIVES:
        if _DONE[name](root):
            continue  # e.g. images/ was moved into place before a crash on annotations
        archive = work / name
        if archive.is_file() and md5sum(archive) != expected[name]:
            archive.unlink()  # a stale or damaged copy: fetch it again
        if not archive.is_file():
            _download(base_url.rstrip("/") + "/" + name, archive, expected[name], progress)
        _extract(archive, root, _ARCHIVE_DIRS[name], _DONE[name])
        if not keep_archives:
            archive.unlink()

    try:
        work.rmdir()
    except OSError:
        pass  # not empty: kept archives


# --- download -------------------------------------------------------------------------------------------


def _download(url: str, dest: Path, expected_md5: str, progress: bool) -> None:
    """Fetch ``url`` into ``dest.part``, verify it, then rename it to ``dest``."""
    part = dest.with_name(dest.name + ".part")
    resumed = _fetch_with_retries(url, part, progress, dest.name)
    actual = md5sum(part)
    if actual != expected_md5 and resumed:
        # The kept bytes may come from another file version or a damaged disk: one fresh try.
        part.unlink()
        _fetch_with_retries(url, part, progress, dest.name)
        actual = md5sum(part)
    if actual != expected_md5:
        part.unlink()
        raise PetsegError(
            f"MD5 mismatch for {dest.name} downloaded from {url}: expected {expected_md5}, got {actual}"
            " (the file was deleted; run again to retry)"
        )
    os.replace(part, dest)  # atomic: dest only ever exists verified


def _fetch_with_retries(url: str, part: Path, progress: bool, name: str) -> bool:
    """Download into ``part``, resuming after cut connections. Returns True if any bytes were appended to
    an existing partial file (so a checksum mismatch may be the old bytes' fault)."""
    attempts = len(_RETRY_DELAYS_S) + 1
    resumed = False
    reason = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(_RETRY_DELAYS_S[attempt - 1])
        try:
            resumed |= _fetch_once(url, part, progress, name)
            return resumed
        except urllib.error.HTTPError as e:
            if e.code == 416:
                return True  # the partial file already holds the whole file (or more): the MD5 decides
            if e.code < 500:
                raise PetsegError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
            reason = f"HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            reason = str(e.reason)
        except (OSError, http.client.HTTPException) as e:
            reason = f"{type(e).__name__}: {e}"
    kept = part.stat().st_size if part.exists() else 0
    hint = f"{kept} bytes kept in {part}, run again to resume" if kept else "run again to retry"
    raise PetsegError(
        f"download of {url} failed after {attempts} attempts ({reason}); {hint}, or place {name}"
        f" in {part.parent} by hand"
    )


def _fetch_once(url: str, part: Path, progress: bool, name: str) -> bool:
    """One HTTP request; appends to ``part`` on a 206 answer, rewrites it on a 200. Raises
    ``ConnectionError`` if the body ends before its Content-Length."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "petseg"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        appended = offset > 0 and response.status == 206
        if appended:
            match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if not match or int(match.group(1)) != offset:
                part.unlink()  # an unusable range: the next attempt starts from zero
                raise ConnectionError(f"server answered Range bytes={offset}- with a different range")
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:
            offset, mode, total = 0, "wb", remaining  # 200: the server ignored the Range, start over
        got = 0
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                desc=name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar,
        ):
            # http.client returns b"" (no error) when the peer closes early, hence the length check.
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if remaining is not None and got < remaining:
        raise ConnectionError(f"connection closed after {offset + got} of {offset + remaining} bytes")
    return appended


# --- extraction -----------------------------------------------------------------------------------------


def _extract(archive: Path, root: Path, top: str, done: Callable[[Path], bool]) -> None:
    """Extract ``archive`` into a scratch folder, check it, then move its ``top`` folder into ``root``."""
    scratch = archive.with_name(archive.name + ".extract")
    shutil.rmtree(scratch, ignore_errors=True)  # leftover of a crashed run
    scratch.mkdir()
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # One pass: each member is checked before it is written, and the scratch folder is
                # deleted if a later one is rejected.
                for member in tar:
                    _check_member(member, scratch, archive.name)
                    if _HAS_DATA_FILTER:
                        tar.extract(member, scratch, filter="data")  # second line of defence
                    else:
                        tar.extract(member, scratch)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise PetsegError(f"cannot extract {archive}: {e}") from None
        if not done(scratch):
            raise PetsegError(f"{archive} does not hold the expected {top}/ contents of the official archive")
        target = root / top
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if target.exists() or target.is_symlink():
            # Never produced by this module (moves are atomic), so it is the user's: do not clobber it.
            raise PetsegError(f"{target} exists but is incomplete; move it away and run again")
        os.replace(scratch / top, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unsafe_path(path: str) -> bool:
    """Absolute (POSIX or Windows) or containing a '..' component."""
    return (
        path.startswith(("/", "\\"))
        or os.path.isabs(path)
        or bool(PureWindowsPath(path).drive)
        or ".." in re.split(r"[/\\]", path)
    )


def _inside(path: str, base: str) -> bool:
    return os.path.commonpath([path, base]) == base


def _check_member(member: tarfile.TarInfo, dest: Path, archive_name: str) -> None:
    """Raise PetsegError unless ``member`` is a file, folder or link that stays inside ``dest``."""

    def reject(why: str) -> PetsegError:
        return PetsegError(f"unsafe member {member.name!r} in {archive_name}: {why}; nothing was installed")

    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise reject("not a regular file, folder or link (device files and FIFOs are refused)")
    if _unsafe_path(member.name):
        raise reject("absolute path or '..' component")
    base = os.path.realpath(dest)
    path = os.path.join(base, member.name)
    # realpath also follows links extracted earlier, so 'a -> /etc' followed by 'a/x' is caught here.
    if not _inside(os.path.realpath(path), base):
        raise reject("resolves outside the extraction folder")
    if member.issym():
        link = member.linkname
        if link.startswith(("/", "\\")) or os.path.isabs(link) or PureWindowsPath(link).drive:
            raise reject(f"symlink to absolute path {link!r}")
        if not _inside(os.path.realpath(os.path.join(os.path.dirname(path), link)), base):
            raise reject(f"symlink to {link!r} points outside the extraction folder")
    elif member.islnk():
        link = member.linkname
        if _unsafe_path(link) or not _inside(os.path.realpath(os.path.join(base, link)), base):
            raise reject(f"hard link to {link!r} points outside the extraction folder")
