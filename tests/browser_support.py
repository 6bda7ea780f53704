"""Helpers for the browser tests: an isolated JupyterLab server and a notebook driven in headless chromium.

``JupyterLab`` starts ``python -m jupyterlab`` on 127.0.0.1 with a random port and token, in a temporary
root directory, with its own config/data/runtime directories, and shuts it down (kernels included) on exit,
even when the test body raised. Every process it starts carries an environment marker, so that processes
left behind after shutdown are found, killed and reported in ``leftovers``.

``LabNotebook`` drives one notebook the way a learner does: open it, wait for the kernel, Run All, look for
tracebacks, press arrow keys on a widget slider and read the plotly plot that the browser renders.

Nothing here installs anything: chromium comes from Debian's package (``scripts/test.sh`` installs it), the
``playwright`` Python package from the ``dev`` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

__all__ = [
    "ARTIFACTS",
    "CHROMIUM_ARGS",
    "MARKER",
    "REPO",
    "JupyterLab",
    "LabNotebook",
    "chromium_path",
    "launch_chromium",
]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MARKER = "FLOWLIB_BROWSER_TEST_ID"

# JupyterLab user settings for the isolated config dir: no news/update toasts over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def chromium_path() -> str:
    """Path of Debian's chromium; fails the test (never skips) when it is missing."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "chromium not found (looked for /usr/bin/chromium and `chromium` on PATH). The browser tests need "
        "Debian's chromium: run `bash scripts/test.sh` (installs it as root) or `apt-get install -y chromium`.",
        pytrace=False,
    )


def launch_chromium(playwright, executable: str | None = None, env: dict[str, str] | None = None):
    """Headless chromium through Playwright's CDP driver; fails the test with the browser's error if it cannot start.

    ``env`` is the browser's environment (pass one carrying a ``JupyterLab`` marker so that the shutdown check
    also catches browser processes left behind).
    """
    path = executable or chromium_path()
    try:
        return playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS, env=env, timeout=60_000
        )
    except Exception as err:  # Playwright raises its own Error type with the browser's stderr inside.
        pytest.fail(f"chromium at {path} could not start under Playwright:\n{err}", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return f"pid {proc.pid}"


class JupyterLab:
    """An isolated JupyterLab server, as a context manager.

    Args:
        workdir: an empty temporary directory; the notebook root is ``workdir / "root"``.
        startup_timeout: seconds to wait for ``/api/status`` to answer.
        exit_grace: seconds that kernels get to exit after the server stopped, before they count as leftovers.

    After ``__exit__``, ``leftovers`` lists the processes (server or kernels) that were still alive after
    the clean shutdown and had to be killed; a test asserts it is empty.
    """

    def __init__(self, workdir: Path, startup_timeout: float = 90.0, exit_grace: float = 10.0):
        self.workdir = Path(workdir)
        self.root = self.workdir / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.token = uuid.uuid4().hex
        self.marker = uuid.uuid4().hex
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "jupyterlab.log"
        self.startup_timeout = startup_timeout
        self.exit_grace = exit_grace
        self.proc: subprocess.Popen | None = None
        self.leftovers: list[str] = []

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _environment(self) -> dict[str, str]:
        config = self.workdir / "config"
        for name, values in LAB_SETTINGS.items():
            target = config / "lab" / "user-settings" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        env = dict(os.environ)
        env.update(
            {
                MARKER: self.marker,
                "JUPYTER_CONFIG_DIR": str(config),
                "JUPYTER_DATA_DIR": str(self.workdir / "data"),  # the venv's kernelspec stays on the data path
                "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
                "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
                "JUPYTERLAB_WORKSPACES_DIR": str(config / "lab" / "workspaces"),
                "IPYTHONDIR": str(self.workdir / "ipython"),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # as in a learner's kernel, not CI's Agg
            }
        )
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTER_TOKEN", None)
        return env

    def __enter__(self) -> JupyterLab:
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
        ]  # fmt: skip
        if os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=self._environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        pytest.fail(f"JupyterLab did not answer /api/status in {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def _request_shutdown(self) -> None:
        request = urllib.request.Request(
            f"{self.base}/api/shutdown", method="POST", headers={"Authorization": f"token {self.token}"}
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # the server may close the connection while it stops; the wait below decides

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the server's own session (start_new_session=True)

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._request_shutdown()  # shuts the kernels down, then the server
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.leftovers.append(f"server pid {self.proc.pid} ignored /api/shutdown for 30 s")
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(timeout=10)
        # Kernels run in their own sessions; give them a moment to follow the server, then kill stragglers.
        deadline = time.monotonic() + self.exit_grace
        while (alive := _marked_processes(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.25)
        for proc in alive:
            self.leftovers.append(_describe(proc))
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        self.proc = None


# JavaScript run in the page. `window.jupyterapp` exists because of --LabApp.expose_app_in_browser.
_JS_NOTEBOOK_READY = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.sessionContext || !panel.content || panel.content.widgets.length === 0) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

_JS_RUN_ALL = """() => {
  window.__flowlibRunAll = {done: false, ok: null, error: null};
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => { window.__flowlibRunAll = {done: true, ok: ok, error: null}; },
    err => { window.__flowlibRunAll = {done: true, ok: false, error: String(err)}; });
}"""

_JS_RUN_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const running = [];
  panel.content.widgets.forEach((cell, index) => {
    const prompt = cell.node.querySelector('.jp-InputPrompt');
    if (prompt && prompt.textContent.includes('*'))
      running.push(`cell ${index}: ${cell.model.sharedModel.getSource().split('\\n')[0].slice(0, 60)}`);
  });
  return {run: window.__flowlibRunAll, kernel: kernel ? kernel.status : 'none', running: running,
          cells: panel.content.widgets.length};
}"""

_JS_KERNEL_IDLE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""

_JS_ERRORS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const errors = [];
  panel.content.widgets.forEach((cell, index) => {
    if (cell.model.type !== 'code') return;
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type === 'error') errors.push(`cell ${index}: ${out.ename}: ${out.evalue}`);
    }
    for (const node of cell.node.querySelectorAll(
        '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')) {
      const text = node.textContent;
      if (/Traceback \\(most recent call last\\)|^\\w+Error\\b/m.test(text))
        errors.push(`cell ${index} stderr: ${text.slice(0, 800)}`);
    }
    for (const node of cell.node.querySelectorAll('.jp-OutputArea-output')) {
      if (node.textContent.includes('Error displaying widget'))
        errors.push(`cell ${index}: ${node.textContent.slice(0, 300)}`);
    }
  });
  return errors;
}"""

# What the learner's browser holds and shows for every plotly plot at or inside an element: the traces' data and
# the rendered SVG marks (point positions, line paths, heatmap images, annotations and axis tick labels).
_JS_PLOT_STATE = """(root) => {
  const plots = root.matches('.js-plotly-plot') ? [root] : [...root.querySelectorAll('.js-plotly-plot')];
  const plain = v => (v && typeof v === 'object' && typeof v.length === 'number') ? Array.from(v, plain) : v;
  const data = plots.map(gd => (gd.data || []).map(t => ({x: plain(t.x), y: plain(t.y), z: plain(t.z)})));
  const attrs = n => n.getAttribute('transform') || n.getAttribute('d') || n.getAttribute('href')
                     || n.getAttribute('xlink:href') || n.textContent;
  const marks = plots.map(gd => [...gd.querySelectorAll(
      '.scatterlayer .point, .scatterlayer path.js-line, .heatmaplayer image, .barlayer path, .annotation-text')]
    .map(attrs));
  const ticks = plots.map(gd => [...gd.querySelectorAll('.xtick text, .ytick text')].map(n => n.textContent));
  return {plots: plots.length, traces: data.map(d => d.length), data: JSON.stringify(data),
          marks: JSON.stringify([marks, ticks]), points: marks.reduce((s, m) => s + m.length, 0)};
}"""


class LabNotebook:
    """One notebook open in JupyterLab in a Playwright ``page``."""

    def __init__(self, page, lab: JupyterLab, name: str):
        self.page = page
        self.lab = lab
        self.name = name
        self.console_errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text[:300]))

    def context(self) -> str:
        """Diagnostics appended to assertion messages."""
        console = "\n".join(self.console_errors[-10:])
        return f"\n--- browser console errors ---\n{console}\n--- JupyterLab log ---\n{self.lab.log_tail(1500)}"

    def open(self, timeout_ms: int = 90_000) -> None:
        self.page.goto(self.lab.url(f"lab/tree/{self.name}"), wait_until="domcontentloaded")
        try:
            self.page.wait_for_function(_JS_NOTEBOOK_READY, timeout=timeout_ms, polling=250)
        except Exception as err:
            raise AssertionError(f"{self.name}: notebook or kernel not ready: {err}{self.context()}") from None

    def run_all(self, timeout_s: float = 240.0) -> None:
        """Run > Run All Cells; wait until every cell finished and the kernel is idle (fail fast if it died)."""
        deadline = time.monotonic() + timeout_s
        self.page.evaluate(_JS_RUN_ALL)
        while True:
            state = self.page.evaluate(_JS_RUN_STATE)
            if state["run"]["done"] and state["kernel"] == "idle" and not state["running"]:
                break
            if state["kernel"] in ("dead", "unknown") or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: Run All did not finish in {timeout_s:.0f} s: {state}\n"
                    f"errors so far: {self.errors()}{self.context()}"
                )
            time.sleep(0.5)
        assert state["run"]["ok"], f"{self.name}: Run All stopped: {state}\n{self.errors()}{self.context()}"

    def errors(self) -> list[str]:
        return self.page.evaluate(_JS_ERRORS)

    def wait_kernel_idle(self, timeout_ms: int = 60_000) -> None:
        self.page.wait_for_function(_JS_KERNEL_IDLE, timeout=timeout_ms, polling=100)

    def first(self, css_class: str):
        """The first visible element with ``css_class`` (ipywidgets put ``add_class`` names on the widget root)."""
        element = self.page.locator(f".{css_class}").first
        try:
            element.wait_for(state="visible", timeout=30_000)
        except Exception:
            raise AssertionError(
                f"{self.name}: no visible element with class {css_class!r} after Run All{self.context()}"
            ) from None
        return element

    def slider(self, css_class: str, description: str):
        """The slider with ``css_class`` whose label reads ``description`` (e.g. ``a11``)."""
        label = self.page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(description)}\s*$"))
        slider = self.page.locator(f".{css_class}").filter(has=label).first
        try:
            slider.wait_for(state="visible", timeout=30_000)
        except Exception:
            labels = self.page.locator(f".{css_class} .widget-label").all_inner_texts()
            raise AssertionError(
                f"{self.name}: no .{css_class} slider labelled {description!r}; labels: {labels}{self.context()}"
            ) from None
        return slider

    @staticmethod
    def cell_output(element):
        """The output area of the notebook cell that holds ``element`` (the whole widget)."""
        cell = element.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-CodeCell ')]").first
        return cell.locator(".jp-Cell-outputArea").first

    @staticmethod
    def plot_state(figure) -> dict:
        """Data and rendered marks of the plotly plots at or inside ``figure`` (see ``_JS_PLOT_STATE``)."""
        return figure.evaluate(_JS_PLOT_STATE)

    def wait_plot(self, figure, timeout_s: float = 30.0) -> dict:
        """Wait until plotly has drawn marks in ``figure`` (plotly.js renders after the widget appears)."""
        deadline = time.monotonic() + timeout_s
        while (state := self.plot_state(figure))["points"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state["plots"] >= 1 and state["points"] > 0, (
            f"{self.name}: no rendered plotly plot in the widget after {timeout_s:.0f} s: {state}{self.context()}"
        )
        return state

    @staticmethod
    def slider_value(slider) -> str:
        """The value shown next to an ipywidgets slider."""
        return slider.locator(".widget-readout").first.inner_text().strip()

    def press_slider(self, slider, key: str, presses: int) -> None:
        """Focus the slider's handle as a learner would (Tab/click) and press ``key`` ``presses`` times."""
        handle = slider.locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.focus()
        for _ in range(presses):
            self.page.keyboard.press(key)

    def wait_plot_change(self, figure, before: dict, timeout_s: float = 30.0) -> dict:
        """Poll until the plots' data and marks differ from ``before`` and stay unchanged for 0.5 s."""
        deadline = time.monotonic() + timeout_s
        state = self.plot_state(figure)
        while time.monotonic() < deadline and (state["data"] == before["data"] or state["marks"] == before["marks"]):
            time.sleep(0.2)
            state = self.plot_state(figure)
        self.wait_kernel_idle()
        while time.monotonic() < deadline:  # let plotly finish redrawing before the screenshot
            time.sleep(0.5)
            settled = self.plot_state(figure)
            if settled == state:
                break
            state = settled
        return state
