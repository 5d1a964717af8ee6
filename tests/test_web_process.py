"""`python -m koalarization serve` with no flags, in its own process, as a person starts it: it serves the
shipped model, logs one line (no traceback) for a client that hangs up mid-upload, and stopped with
SIGTERM it leaves nothing in its temp folder (TensorFlow's autograph modules included)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="the web server needs uvicorn (pip install -e .[test])")

from conftest import REPO  # noqa: E402
from test_web_load import free_port, get_status, post  # noqa: E402

START_S = 180  # the shipped model loads in ~15 s on 2 busy cores


@dataclasses.dataclass
class Server:
    process: subprocess.Popen
    url: str
    tmp: Path  # its TMPDIR
    log_path: Path  # its stderr

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The no-flag `serve` on a free port, with its own empty TMPDIR; stderr (uvicorn's log) goes to a file."""
    tmp, cwd = tmp_path_factory.mktemp("serve_tmp"), tmp_path_factory.mktemp("serve_cwd")
    log = cwd.parent / "serve.log"
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "koalarization", "serve", "--port", str(port)],
                                   cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    running = Server(process, f"http://127.0.0.1:{port}", tmp, log)
    deadline = time.monotonic() + START_S
    while get_status(running.url + "/api/health") != 200:
        assert process.poll() is None, running.log()[-3000:]
        assert time.monotonic() < deadline, f"the server did not start within {START_S} s"
        time.sleep(0.5)
    yield running
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def test_serve_without_weights_serves_the_shipped_model(server):
    with urllib.request.urlopen(server.url + "/api/health", timeout=10) as response:
        health = json.load(response)
    assert [(m["index"], m["label"]) for m in health["models"]] == [(0, "shipped")]


def test_a_client_that_hangs_up_mid_upload_is_one_log_line(server):
    host, port = server.url.removeprefix("http://").split(":")
    boundary = "b0undary"
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n').encode()
    for content_type, body in (("image/png", b"\x89PNG" + bytes(50_000)),
                               (f"multipart/form-data; boundary={boundary}", part + bytes(50_000))):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /api/colorize HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode() + body)  # half of the announced body
            time.sleep(0.3)  # the server has started reading it
    deadline = time.monotonic() + 30
    while server.log().count("upload abandoned") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log()
    assert log.count("WARNING: upload abandoned: the client disconnected after sending") == 2, log[-3000:]
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert get_status(server.url + "/api/health") == 200


def test_sigterm_leaves_no_autograph_files_behind(server):
    """Runs last in this file: it stops the server. A photo is colorized first, so TensorFlow has written
    its autograph modules to the server's TMPDIR; SIGTERM must end the process with them removed."""
    photo = io.BytesIO()
    Image.new("RGB", (24, 16), (120, 90, 60)).save(photo, format="PNG")
    status, _ = post(server.url, "small.png", photo.getvalue())
    assert status == 200
    generated = [p.name for p in server.tmp.iterdir() if p.name.startswith("__autograph_generated_file")]
    assert generated, "no autograph module was written: this test would not see them left behind"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 128 + signal.SIGTERM
    assert sorted(p.name for p in server.tmp.iterdir()) == []
    assert "Traceback" not in server.log(), server.log()[-3000:]
