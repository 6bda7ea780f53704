"""The notebooks' widgets in real JupyterLab in headless chromium, used the way a learner uses them.

For each case: start an isolated JupyterLab, open the notebook as shipped,
Run All, check that no cell shows a traceback, press ArrowRight on a widget slider, and check that the slider's
readout and the plotly plot (trace data and rendered SVG marks) changed. Screenshots of the widget's cell
output before and after the move go to ``artifacts/browser/``. JupyterLab and its kernels are shut down even
on failure, and the test fails if any of their processes outlived the shutdown.

Run alone: ``.venv/bin/python -m pytest tests/test_browser.py -m browser -n 0 -q``.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest
from browser_support import ARTIFACTS, MARKER, REPO, JupyterLab, LabNotebook, launch_chromium
from playwright.sync_api import sync_playwright

NOTEBOOKS = REPO / "notebooks"
# notebook, CSS class prefix of the widget's hooks in flowlib.viz (-slider, -readout, -figure), the slider to
# move, screenshot prefix. a11 changes tr A, so every eigenvalue moves; k21 (below the centre) pairs with the
# default kernel's k01 (above it) and spreads the convolution matrix's spectrum, which is a single point before.
CASES = [
    pytest.param("01_matrix_exponential.ipynb", "flowlib-eigen", "a11", "01_eigen", id="01-eigen"),
    pytest.param("02_convolution_exponential.ipynb", "flowlib-kernel", "k21", "02_kernel", id="02-kernel"),
]
PRESSES = 3  # arrow-key presses on the slider handle (one slider step each)


class Timer:
    """Seconds per phase, printed with ``-s`` to keep an eye on the runtime budget."""

    def __init__(self):
        self.last = time.monotonic()
        self.laps = []

    def lap(self, name):
        now = time.monotonic()
        self.laps.append(f"{name} {now - self.last:.1f}s")
        self.last = now

    def __str__(self):
        return ", ".join(self.laps)


@pytest.mark.browser
@pytest.mark.timeout(420)
@pytest.mark.parametrize(("notebook", "hook", "slider_name", "shot"), CASES)
def test_slider_moves_plot(notebook, hook, slider_name, shot, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lab = JupyterLab(tmp_path / "lab")
    shutil.copytree(NOTEBOOKS, lab.root / "notebooks")
    shutil.copytree(REPO / "results", lab.root / "results")  # notebooks read the committed results (../results)
    clock = Timer()
    with lab, sync_playwright() as playwright:
        clock.lap("jupyterlab")
        browser = launch_chromium(playwright, env={**os.environ, MARKER: lab.marker})
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        nb = LabNotebook(page, lab, f"notebooks/{notebook}")
        clock.lap("chromium")
        try:
            nb.open()
            clock.lap("open+kernel")
            nb.run_all()
            clock.lap("run all")
            errors = nb.errors()
            assert not errors, f"{notebook}: cells show errors after Run All:\n" + "\n".join(errors)

            slider = nb.slider(f"{hook}-slider", slider_name)
            readout, figure = nb.first(f"{hook}-readout"), nb.first(f"{hook}-figure")
            output = nb.cell_output(figure)
            before = nb.wait_plot(figure)
            value_before, text_before = nb.slider_value(slider), readout.inner_text()
            output.screenshot(path=ARTIFACTS / f"{shot}_before.png")

            nb.press_slider(slider, "ArrowRight", PRESSES)
            if nb.slider_value(slider) == value_before:  # the handle sat at its maximum
                nb.press_slider(slider, "ArrowLeft", 2 * PRESSES)
            value_after = nb.slider_value(slider)
            assert value_after != value_before, f"{notebook}: arrow keys did not move the slider"

            after = nb.wait_plot_change(figure, before)
            clock.lap("slider->plot")
            output.screenshot(path=ARTIFACTS / f"{shot}_after.png")
            moved = f"{notebook}: slider {slider_name} {value_before} -> {value_after}"
            assert after["data"] != before["data"], f"{moved} but the plot data did not change{nb.context()}"
            assert after["marks"] != before["marks"], f"{moved}: plot data changed but the drawing did not"
            assert readout.inner_text() != text_before, f"{moved} but the readout still says {text_before!r}"
            assert not nb.errors(), f"{notebook}: errors after the slider move: {nb.errors()}"
        except BaseException:
            with contextlib.suppress(Exception):  # a crashed page must not hide the original error
                page.screenshot(path=ARTIFACTS / f"{shot}_failure.png")
            raise
        finally:
            browser.close()
    clock.lap("shutdown")
    print(f"\n{notebook}: {clock}; plot {before['traces']} traces, {before['points']} marks")
    assert not lab.leftovers, f"processes outlived the browser and JupyterLab's shutdown (killed): {lab.leftovers}"


@pytest.mark.browser
def test_shutdown_check_catches_a_stray_process(tmp_path):
    """The leftover check can fail: a process of the server's family that ignores the shutdown is reported."""
    with JupyterLab(tmp_path / "lab", exit_grace=1.0) as lab:
        stray = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            env={**os.environ, MARKER: lab.marker},  # what a kernel launched by this server inherits
            start_new_session=True,
        )
    stray.wait(timeout=10)
    assert len(lab.leftovers) == 1 and f"pid {stray.pid}:" in lab.leftovers[0], lab.leftovers
    assert not psutil.pid_exists(stray.pid)


@pytest.mark.browser
def test_browser_start_failure_is_reported_not_skipped():
    """A browser that cannot start fails the test with Playwright's reason (no silent skip)."""
    with sync_playwright() as playwright, pytest.raises(pytest.fail.Exception, match="could not start") as failure:
        launch_chromium(playwright, executable="/bin/false")
    assert "/bin/false" in str(failure.value)
