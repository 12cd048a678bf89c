"""download.py against a local HTTP server (127.0.0.1 only; never the real dataset host)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from petseg import download
from petseg.download import download_oxford_pet, is_complete, md5sum
from petseg.errors import PetsegError

# --- archives -------------------------------------------------------------------------------------------


def _image_bytes(fmt: str, mode: str, value: int | tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8), value).save(buf, fmt)
    return buf.getvalue()


def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


NAMES = ["Abyssinian_1", "beagle_2", "Bombay_3"]


def _good_archives() -> dict[str, bytes]:
    images = [_dir("images")] + [
        _file(f"images/{n}.jpg", _image_bytes("JPEG", "RGB", (i * 40, 90, 200))) for i, n in enumerate(NAMES)
    ]
    annotations = [_dir("annotations"), _dir("annotations/trimaps")]
    annotations += [_file(f"annotations/trimaps/{n}.png", _image_bytes("PNG", "L", 2)) for n in NAMES]
    annotations += [
        _file("annotations/trainval.txt", b"Abyssinian_1 1 1 1\nbeagle_2 2 2 1\n"),
        _file("annotations/test.txt", b"Bombay_3 3 1 1\n"),
    ]
    return {"images.tar.gz": _tar_gz(images), "annotations.tar.gz": _tar_gz(annotations)}


GOOD = _good_archives()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _checksums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: _md5(data) for name, data in files.items()}


# --- server ---------------------------------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = dict(GOOD)
        self.mode = "good"  # good | corrupt | cut | norange
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_done: set[str] = set()
        self.lock = threading.Lock()

    def ranges(self, name: str) -> list[str | None]:
        return [r for p, r in self.requests if p.endswith("/" + name)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state = self.server.state
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, range_header))
        name = self.path.rsplit("/", 1)[-1]
        data = state.files.get(name) if self.path.startswith("/data/") else None
        if data is None:
            self.send_error(404)
            return
        if state.mode == "corrupt":
            data = bytes(b ^ 0xFF for b in data)

        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and state.mode != "norange":
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

        if state.mode == "cut" and name not in state.cut_done:
            state.cut_done.add(name)
            self.wfile.write(body[: len(body) // 2])  # full Content-Length promised, half sent
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    state: _State


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_RETRY_DELAYS_S", (0.0, 0.0))
    monkeypatch.setattr(download, "_TIMEOUT_S", 5.0)


@pytest.fixture
def server() -> Iterator[tuple[_State, str]]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}/data/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def _assert_official_layout(root: Path) -> None:
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{n}.jpg" for n in NAMES)
    assert sorted(p.name for p in (root / "annotations/trimaps").iterdir()) == sorted(
        f"{n}.png" for n in NAMES
    )
    assert (root / "annotations/trainval.txt").read_text().startswith("Abyssinian_1")
    assert (root / "annotations/test.txt").is_file()
    Image.open(root / "images/beagle_2.jpg").verify()
    assert is_complete(root)


def _fetch(root: Path, url: str, **kwargs: object) -> None:
    download_oxford_pet(root, base_url=url, progress=False, checksums=_checksums(GOOD), **kwargs)  # type: ignore[arg-type]


# --- cases ----------------------------------------------------------------------------------------------


def test_constants_and_md5sum(tmp_path: Path) -> None:
    assert download.OFFICIAL_BASE_URL == "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
    assert download.ARCHIVES == {
        "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
        "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
    }
    path = tmp_path / "x.bin"
    path.write_bytes(GOOD["images.tar.gz"])
    assert md5sum(path) == _md5(GOOD["images.tar.gz"])
    assert not is_complete(tmp_path)


def test_good_download_gives_official_layout_and_second_call_is_offline(
    server: tuple[_State, str], root: Path
) -> None:
    state, url = server
    _fetch(root, url)
    _assert_official_layout(root)
    assert all(r is None for _, r in state.requests) and len(state.requests) == 2
    assert not (root / ".downloads").exists()  # archives deleted, work folder removed

    state.requests.clear()
    _fetch(root, url)
    assert state.requests == []


def test_keep_archives(server: tuple[_State, str], root: Path) -> None:
    _, url = server
    _fetch(root, url, keep_archives=True)
    _assert_official_layout(root)
    for name, data in GOOD.items():
        assert md5sum(root / ".downloads" / name) == _md5(data)


def test_corrupted_download_raises_and_leaves_nothing(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    state.mode = "corrupt"
    with pytest.raises(PetsegError, match=r"MD5 mismatch for images\.tar\.gz") as err:
        _fetch(root, url)
    assert _md5(GOOD["images.tar.gz"]) in str(err.value)  # expected and actual are both named
    assert _md5(bytes(b ^ 0xFF for b in GOOD["images.tar.gz"])) in str(err.value)
    assert len(state.requests) == 1  # a fresh download that mismatches is not retried
    assert list((root / ".downloads").iterdir()) == []
    assert not (root / "images").exists() and not (root / "annotations").exists()
    assert not is_complete(root)


def test_cut_connection_is_resumed_with_range(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    state.mode = "cut"
    _fetch(root, url)
    _assert_official_layout(root)
    for name in GOOD:
        ranges = state.ranges(name)
        assert len(ranges) == 2 and ranges[0] is None
        match = re.fullmatch(r"bytes=(\d+)-", ranges[1] or "")
        assert match and 0 < int(match.group(1)) < len(GOOD[name])


def test_stale_partial_that_fails_md5_is_fetched_again_from_scratch(
    server: tuple[_State, str], root: Path
) -> None:
    state, url = server
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads/images.tar.gz.part").write_bytes(b"\0" * 100)  # bytes of some other file
    _fetch(root, url)
    _assert_official_layout(root)
    assert state.ranges("images.tar.gz") == ["bytes=100-", None]


def test_server_ignoring_range_restarts_from_zero(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    state.mode = "norange"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads/images.tar.gz.part").write_bytes(GOOD["images.tar.gz"][:50])
    _fetch(root, url)
    _assert_official_layout(root)
    assert state.ranges("images.tar.gz") == ["bytes=50-"]  # answered 200: rewritten, not appended


def test_verified_archives_on_disk_need_no_network(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    (root / ".downloads").mkdir(parents=True)
    for name, data in GOOD.items():
        (root / ".downloads" / name).write_bytes(data)
    _fetch(root, url)
    _assert_official_layout(root)
    assert state.requests == []


def test_only_missing_part_is_fetched(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    _fetch(root, url)
    (root / "annotations/test.txt").unlink()
    (root / "annotations/trainval.txt").unlink()
    for p in (root / "annotations/trimaps").iterdir():
        p.unlink()
    for d in ("annotations/trimaps", "annotations"):
        (root / d).rmdir()
    state.requests.clear()
    _fetch(root, url)
    _assert_official_layout(root)
    assert [p for p, _ in state.requests] == ["/data/annotations.tar.gz"]


def test_server_down_raises_petseg_error(tmp_path: Path, root: Path) -> None:
    with socket.socket() as s:  # a port that was just free and is now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        PetsegError, match=r"download of http://127\.0\.0\.1:\d+/images\.tar\.gz failed after 3"
    ):
        _fetch(root, f"http://127.0.0.1:{port}/")
    assert not (root / "images").exists()


def test_http_404_raises_without_retry(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    with pytest.raises(PetsegError, match="HTTP 404"):
        _fetch(root, url.replace("/data/", "/nothing/"))
    assert len(state.requests) == 1


def _malicious(tmp_path: Path) -> list[tuple[str, list[tuple[tarfile.TarInfo, bytes | None]]]]:
    outside = str(tmp_path / "outside")
    evil = b"evil"
    return [
        ("../evil.txt", [_file("../evil.txt", evil)]),
        ("images/../../../evil.txt", [_file("images/../../../evil.txt", evil)]),
        (f"{outside}/evil.txt", [_file(f"{outside}/evil.txt", evil)]),
        ("images/abs_link", [_link("images/abs_link", outside, tarfile.SYMTYPE)]),
        ("images/up_link", [_link("images/up_link", "../../../../outside", tarfile.SYMTYPE)]),
        ("images/hard", [_link("images/hard", "../../outside/evil.txt", tarfile.LNKTYPE)]),
        ("images/dev", [(_link("images/dev", "", tarfile.CHRTYPE)[0], None)]),
    ]


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-tarfile-filter", "own-check-only"])
@pytest.mark.parametrize("case", range(7))
def test_malicious_archive_is_refused(
    server: tuple[_State, str],
    tmp_path: Path,
    root: Path,
    case: int,
    data_filter: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, url = server
    monkeypatch.setattr(download, "_HAS_DATA_FILTER", data_filter and download._HAS_DATA_FILTER)
    (tmp_path / "outside").mkdir()
    member, bad = _malicious(tmp_path)[case]
    # A plausible archive with the bad member after a good one and before the rest.
    entries = [_dir("images"), _file("images/a.jpg", b"x"), *bad, _file("images/b.jpg", b"y")]
    state.files["images.tar.gz"] = _tar_gz(entries)
    with pytest.raises(PetsegError, match=re.escape(f"unsafe member {member!r}")):
        download_oxford_pet(root, base_url=url, progress=False, checksums=_checksums(state.files))

    assert list((tmp_path / "outside").iterdir()) == []
    written_outside = [
        os.path.join(d, f)
        for d, _, files in os.walk(tmp_path)
        for f in files
        if not Path(d).is_relative_to(root)
    ]
    assert written_outside == []
    assert not (root / "images").exists()
    assert not any(p.name.endswith(".extract") for p in (root / ".downloads").iterdir())


def test_archive_without_expected_folder_is_refused(server: tuple[_State, str], root: Path) -> None:
    state, url = server
    state.files["images.tar.gz"] = _tar_gz([_dir("pictures"), _file("pictures/a.jpg", b"x")])
    with pytest.raises(PetsegError, match="expected images/"):
        download_oxford_pet(root, base_url=url, progress=False, checksums=_checksums(state.files))
    assert not (root / "images").exists() and not (root / "pictures").exists()
