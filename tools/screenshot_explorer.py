"""Screenshot of notebook 04's live latent-space explorer in JupyterLab, taken with headless Chromium.

What it does:

1. writes a copy of ``notebooks/04_latent_space.ipynb`` with small parameters (papermill's parameter injection)
   to ``runs/screenshot/`` (the kernel finds the repository from there);
2. starts ``jupyter lab`` on 127.0.0.1 with a random token and throw-away settings/workspace folders;
3. opens the notebook in Chromium (via playwright, with the system's browser: no ``playwright install``), runs all
   cells from the *Run* menu, waits for the explorer, clicks **Decode** and waits for the decoded crystal
   (crystal-toolkit's 3-D view when installed, else the static drawing);
4. saves a PNG of the explorer (default ``figures/latent/explorer_live.png``; on failure the whole page as it
   was, ``*_error.png`` beside it);
5. always shuts Chromium and JupyterLab (and with it the kernel and crystal-toolkit's server) down.

Needs: ``pip install -e ".[notebooks,viz3d]" playwright`` and a Chromium binary (Debian: ``apt-get install
chromium``). Usage::

    python tools/screenshot_explorer.py [--dataset perov_5] [--checkpoint runs/perov_5_quick_seed0/model.pt] \\
        [--prop-checkpoint ...] [--out figures/latent/explorer_live.png] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAB_SETTINGS = {  # no pop-ups (news, kernel choice); render every cell (no windowing) so the explorer is in the DOM
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                   "autoStartDefaultKernel": True},
}
SMALL = {"n_encode": 300, "projections": ["pca"], "n_interp": 3, "n_opt": 2, "opt_steps": 9}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(params: dict) -> Path:
    """The parameterised copy under runs/screenshot/ (path relative to the repository)."""
    nb = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / "04_latent_space.ipynb")), params)
    path = REPO / "runs" / "screenshot" / "04_latent_space_live.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path.relative_to(REPO)


def start_lab(tmp: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port serving the repository, settings and runtime files under ``tmp``."""
    for name, value in LAB_SETTINGS.items():
        path = tmp / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    (tmp / "config" / "labconfig").mkdir(parents=True)  # no "build recommended" dialog (dash's old extension)
    (tmp / "config" / "labconfig" / "page_config.json").write_text(json.dumps({"buildCheck": False}))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTER_RUNTIME_DIR": str(tmp / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--ServerApp.port_retries=0"]
    cmd += ["--allow-root"] if os.geteuid() == 0 else []  # containers often run as root
    log = open(tmp / "lab.log", "w")  # noqa: SIM115 - closed with the process
    lab = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return lab
        except OSError:
            if lab.poll() is not None:
                break
            time.sleep(1)
    stop(lab)
    raise RuntimeError("JupyterLab did not start:\n" + (tmp / "lab.log").read_text()[-2000:])


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (JupyterLab then shuts its kernels down), SIGKILL to the process group after 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def run_all(page) -> None:
    """Run > Run All Cells, repeated until a cell has run (requests made while the kernel connects are lost)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for _ in range(5):
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_selector(".jp-InputPrompt:has-text('[*]'), .jp-InputPrompt:has-text('[1]')", timeout=30_000)
            return
        except PlaywrightTimeoutError:
            continue
    raise RuntimeError("the kernel never started running the notebook")


def screenshot(url: str, out: Path, tmp: Path, timeout_s: float, crystal_toolkit: bool) -> None:
    """Open the notebook, run all cells, click Decode and save a PNG of the explorer."""
    from playwright.sync_api import sync_playwright

    ms = int(timeout_s * 1000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1150})
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            page.keyboard.press("Control+b")  # hide the file browser: more room for the explorer
            run_all(page)
            page.wait_for_selector(".jp-OutputArea-output:has-text('crystal-toolkit server(s)')", timeout=ms)  # last
            decode = page.locator(".jupyter-widgets button:has-text('Decode')")
            decode.scroll_into_view_if_needed()
            decode.click()
            page.wait_for_selector("text=at t = 0.50:", timeout=ms)
            if crystal_toolkit:
                page.frame_locator("iframe").locator("canvas").first.wait_for(timeout=120_000)
            page.wait_for_timeout(3000)  # let the 3-D scene settle
            explorer = page.locator(".jp-OutputArea-output:has(.jupyter-widgets button:has-text('Decode'))").first
            explorer.scroll_into_view_if_needed()
            out.parent.mkdir(parents=True, exist_ok=True)
            explorer.screenshot(path=str(out))
        except Exception:
            page.screenshot(path=str(out.with_name(out.stem + "_error.png")))  # what the page showed
            raise
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--checkpoint", help="explorer model (default: the notebook's)")
    parser.add_argument("--prop-checkpoint", help="model with the property head (default: the notebook's)")
    parser.add_argument("--out", type=Path, default=REPO / "figures" / "latent" / "explorer_live.png")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for running the notebook")
    args = parser.parse_args()
    params = {**SMALL, "dataset": args.dataset, "figures_dir": str(REPO / "runs" / "screenshot" / "figures")}
    params |= {k: str(Path(v).resolve()) for k, v in (("checkpoint", args.checkpoint),
                                                      ("prop_checkpoint", args.prop_checkpoint)) if v}
    notebook = write_notebook(params)
    try:
        import crystal_toolkit  # noqa: F401

        has_ctk = True
    except ImportError:
        has_ctk = False
    port, token = free_port(), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="tvcsp-lab-") as tmp:
        lab = start_lab(Path(tmp), port, token)
        try:
            screenshot(f"http://127.0.0.1:{port}/lab/tree/{notebook}?token={token}", args.out, Path(tmp),
                       args.timeout, has_ctk)
        finally:
            stop(lab)
    print(f"wrote {args.out} (crystal-toolkit view: {has_ctk})")


if __name__ == "__main__":
    main()
