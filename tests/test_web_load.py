"""A bounded load test of the real server: `koalarization serve` in its own process, 8 concurrent clients,
~200 good and bad uploads. Every good one is colorized, every bad one is a 4xx, the server's memory stays
bounded, nothing is written to disk, and a body announced over the limit is refused before it is sent."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="the web server needs uvicorn (pip install -e .[test])")

from koalarization.inference.web.server import MAX_UPLOAD_BYTES  # noqa: E402

from conftest import REPO, synthetic_photo  # noqa: E402
from corpus import write_bomb  # noqa: E402
from test_colorize import make_weights  # noqa: E402

REQUESTS, CLIENTS = 200, 8
TIME_LIMIT_S = 90  # ~12 s on 2 busy CPU cores; each request also has a 60 s client timeout
MAX_RSS_GROWTH_MB = 150  # after warm-up; a leak of the uploads alone would be ~1 MB per 10 requests


def post(url: str, name: str, data: bytes) -> tuple[int, bytes]:
    """A multipart upload with the standard library: -> (status, body)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/api/colorize", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, pid, temp folder, working folder) of a real server; its TMPDIR and cwd start empty."""
    weights = make_weights(tmp_path_factory.mktemp("model"))
    tmp, cwd = tmp_path_factory.mktemp("server_tmp"), tmp_path_factory.mktemp("server_cwd")
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "koalarization", "serve", "--weights", str(weights),
                                "--port", str(port)], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stderr.read()[-3000:]
        if get_status(url + "/api/health") == 200:
            break
        assert time.monotonic() < deadline, "the server did not start within 120 s"
        time.sleep(0.5)
    yield url, process.pid, tmp, cwd
    process.terminate()
    process.wait(timeout=30)


def workload() -> list[tuple[str, bytes, int]]:
    """(name, upload, expected status class) cycled over the requests: 2/3 good, 1/3 bad."""
    rng = np.random.default_rng(0)
    bomb = Path(os.environ.get("TMPDIR", "/tmp")) / f"load_bomb_{os.getpid()}.png"
    write_bomb(bomb)
    bomb_bytes = bomb.read_bytes()
    bomb.unlink()
    good_png = encoded(synthetic_photo(1, size=(120, 160)), "PNG")
    return [
        ("good.png", good_png, 200),
        ("good.jpg", encoded(synthetic_photo(2, size=(90, 70)), "JPEG"), 200),
        ("noise.png", encoded(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "PNG"), 200),
        ("notes.txt", b"not a photo at all\n" * 20, 400),
        ("cut.png", good_png[: len(good_png) // 2], 400),
        ("bomb.png", bomb_bytes, 400),
    ]


def test_load_good_and_bad_uploads(server):
    url, pid, tmp, cwd = server
    work = workload()
    sizes = {name: Image.open(io.BytesIO(data)).size for name, data, want in work if want == 200}

    def send(i: int) -> tuple[str, int, int, bytes]:
        name, data, want = work[i % len(work)]
        return name, want, *post(url, name, data)

    with ThreadPoolExecutor(CLIENTS) as pool:  # warm-up: XLA compiles the colour kernels on first use
        list(pool.map(send, range(2 * len(work))))
    before = rss_mb(pid)
    # TensorFlow writes its autograph sources to TMPDIR while tracing the colour kernels (warm-up); from
    # then on, nothing may appear: an upload spooled to disk would.
    files_before = sorted(tmp.iterdir()), sorted(cwd.iterdir())
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(send, range(REQUESTS)))
    seconds = time.monotonic() - started
    growth = rss_mb(pid) - before
    print(f"{REQUESTS} requests from {CLIENTS} clients in {seconds:.1f} s; server RSS {before:.0f} MB, "
          f"grew {growth:+.1f} MB")

    assert seconds < TIME_LIMIT_S, f"{REQUESTS} requests took {seconds:.0f} s"
    for name, want, status, content in results:
        if want == 200:
            assert status == 200, (name, status, content[:200])
            with Image.open(io.BytesIO(content)) as out:
                assert out.size == sizes[name]
        else:
            assert 400 <= status < 500, (name, status, content[:200])
    assert growth < MAX_RSS_GROWTH_MB
    assert (sorted(tmp.iterdir()), sorted(cwd.iterdir())) == files_before  # uploads never touch the disk
    assert files_before[1] == [] and all(p.name.startswith("__autograph_generated") for p in files_before[0])


def read_response(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def test_announced_oversize_body_is_refused_before_it_is_sent(server):
    url, *_ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /api/colorize HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 10000000000\r\n\r\n\x89PNG")  # 10 GB announced, 4 bytes sent
        response = read_response(sock, 10)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert time.monotonic() - started < 5  # answered at once, not after waiting for the body


def test_chunked_oversize_body_is_cut_off_at_the_limit(server):
    """No Content-Length: the server reads until the limit, answers 413 and stops reading."""
    url, *_ = server
    host, port = url.removeprefix("http://").split(":")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, bytes(1 << 20))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/colorize HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent, response = 0, b""
        sock.settimeout(0.05)
        while sent < 3 * MAX_UPLOAD_BYTES:
            try:
                sock.sendall(chunk)
                sent += 1 << 20
            except OSError:  # the server closed the connection after its 413
                break
            try:
                response += sock.recv(65536)
            except socket.timeout:
                continue
            if response:
                break
        if b"\r\n\r\n" not in response:
            response += read_response(sock, 10)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent <= MAX_UPLOAD_BYTES + (8 << 20)  # it stopped reading near the limit, not at the end


def test_slow_uploads_hold_no_work_slot_and_are_cut_off(server):
    """Ten clients trickle an upload a byte a second: a normal upload beside them is colorized within
    seconds, and each trickler gets 408 once its deadline passes (server.UPLOAD_GRACE_S)."""
    from koalarization.inference.web.server import UPLOAD_GRACE_S

    url, *_ = server
    host, port = url.removeprefix("http://").split(":")
    trickling = []
    answers: dict[int, bytes] = {}
    normal_seconds = None
    try:
        for _ in range(10):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /api/colorize HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n\x89")
            sock.settimeout(0.01)
            trickling.append(sock)
        started = time.monotonic()
        data = encoded(synthetic_photo(3, size=(60, 80)), "PNG")
        with ThreadPoolExecutor(1) as pool:
            normal = pool.submit(post, url, "normal.png", data)
            while normal_seconds is None or len(answers) < len(trickling):
                if normal_seconds is None and normal.done():
                    normal_seconds = time.monotonic() - started
                for i, sock in enumerate(trickling):
                    if i in answers:
                        continue
                    try:
                        answers[i] = sock.recv(65536)
                    except socket.timeout:
                        try:
                            sock.sendall(b"\0")  # one more byte of the upload
                        except OSError:
                            answers[i] = b""
                    except OSError:
                        answers[i] = b""
                assert time.monotonic() - started < 60, f"{len(answers)} of the tricklers answered after 60 s"
                time.sleep(1.0)
            status, content = normal.result()
        cut_off = time.monotonic() - started
    finally:
        for sock in trickling:
            sock.close()
    assert status == 200, content[:200]
    assert normal_seconds < 10, normal_seconds  # not held behind the tricklers
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers.values()), [a[:40] for a in answers.values()]
    assert cut_off < UPLOAD_GRACE_S + 15, cut_off
