"""``make lab`` starts JupyterLab on notebooks/: the page and notebook 04 are served, and no server is left behind."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def _wait_for(url: str, proc: subprocess.Popen, timeout: float) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"make lab exited with status {proc.returncode}")
        try:
            return _get(url)
        except OSError:
            time.sleep(1)
    raise AssertionError(f"JupyterLab did not answer {url} within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole process group (make, JupyterLab, kernels), SIGKILL after 60 s."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_make_lab_serves_the_explorer_and_stops_cleanly(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token}" + (" --allow-root" if os.geteuid() == 0 else ""))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status, page = _wait_for(f"http://127.0.0.1:{port}/lab?token={token}", proc, timeout=1800)
        assert status == 200 and b"JupyterLab" in page
        status, body = _get(f"http://127.0.0.1:{port}/api/contents/04_latent_space.ipynb?token={token}")
        notebook = json.loads(body)
        assert status == 200 and notebook["type"] == "notebook" and notebook["name"] == "04_latent_space.ipynb"
        assert any("parameters" in c["metadata"].get("tags", []) for c in notebook["content"]["cells"])
        # the URL is printed (a token given on the command line is shown as "...")
        assert f"http://127.0.0.1:{port}/lab?token=" in (tmp_path / "lab.log").read_text()
    finally:
        _stop(proc)
        log.close()
    time.sleep(1)
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/lab?token={token}")
    group = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert group.stdout.strip() == "", f"processes left running: {group.stdout}"
