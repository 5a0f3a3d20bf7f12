"""The documentation site builds strictly, and reads in a real browser.

`mkdocs build --strict` fails on a broken link or anchor, a page missing from `nav`, or an
API page whose object mkdocstrings cannot find; mkdocs comes with the `test` extra, so that
part never skips. Then, where Debian's `chromium` is installed (`.ci/run` installs it best
effort), the built site is served on 127.0.0.1 and headless Chromium loads the home page and
a recipe page: the page title, Material's navigation with the page names, a table on the
recipe page, and screenshots at desktop and phone width that are not blank.

Set PTFLOW_DOCS_SCREENSHOTS=DIR to keep the screenshots (to look at them yourself).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import browser

REPO = Path(__file__).resolve().parents[2]
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
PAGES = {  # path -> (page title, text the page must show)
    "": ("ptflow", "Make a PyTorch model fast for inference"),
    "recipes/combinations/": ("Which combinations work - ptflow", "int8_dynamic"),
}
NAV_NAMES = ("Getting started", "Concepts", "Recipes", "Measuring", "Sweeps and choosing", "Your own model and data",
             "Hydra and MLflow", "Failure modes", "Extending ptflow", "CLI reference", "Benchmarks")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (the test extra has it too)")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "--site-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


def test_site_builds_strictly(site):
    for page in ("index.html", "getting-started/index.html", "recipes/combinations/index.html",
                 "api/quantize/index.html", "extending/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "quantize" / "index.html").read_text()
    assert "quantize_recipe" in api and "QuantizeJob" in api, "mkdocstrings rendered no API for the quantize registry"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _served(directory: Path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_site_reads_in_headless_chromium(site, tmp_path):
    chromium = browser.chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it best effort)")
    keep = os.environ.get("PTFLOW_DOCS_SCREENSHOTS")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with _served(site) as base:
        for path, (title, text) in PAGES.items():
            dom = browser.browse(chromium, tmp_path / "profile", "--dump-dom", base + path)
            html = dom.stdout
            assert dom.returncode == 0 and "</html>" in html, f"chromium --dump-dom {path}:\n{dom.stderr[-2000:]}"
            assert f"<title>{title}</title>" in html, f"{path}: no <title>{title}</title>"
            assert text in html, f"{path}: '{text}' not on the page"
            nav = html[html.index('md-nav--primary'):]
            missing = [name for name in NAV_NAMES if name not in nav]
            assert not missing, f"{path}: the navigation lacks {missing}"
            if path.startswith("recipes/"):
                assert "<table" in html, f"{path}: no table"
            for size, (width, height) in SIZES.items():
                png = shots / f"{path.strip('/').replace('/', '_') or 'home'}-{size}.png"
                shot = browser.browse(chromium, tmp_path / "profile", f"--screenshot={png}",
                                f"--window-size={width},{height}", base + path)
                assert shot.returncode == 0 and png.is_file(), f"no screenshot of {path} at {size}:\n{shot.stderr[-2000:]}"
                colours = browser.distinct_colours(png)
                assert colours > 50, f"{png.name}: {colours} distinct colours: a blank page?"
