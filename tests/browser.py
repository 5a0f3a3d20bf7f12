"""Headless Chromium for the tests and bench scripts that look at a page as a user would
(the docs site, the MLflow UI): Debian's `chromium`, where installed (`.ci/run` installs it
best effort); callers skip without it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(binary: str, profile: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """One headless Chromium call (--dump-dom URL, --screenshot=PNG URL, ...)."""
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def distinct_colours(png: Path) -> int:
    """How many colours the screenshot holds: a blank page has a handful."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(str(png))
    flat = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(flat, axis=0))


def screenshot(binary: str, profile: Path, url: str, png: Path, width: int = 1600, height: int = 1000,
               wait_ms: int = 30000) -> subprocess.CompletedProcess:
    """A screenshot of `url` once the page has had `wait_ms` of (virtual) time to load and render."""
    return browse(binary, profile, f"--screenshot={png}", f"--window-size={width},{height}",
                  f"--virtual-time-budget={wait_ms}", url)


def dom(binary: str, profile: Path, url: str, wait_ms: int = 30000) -> str:
    """The page's DOM once rendered (a single-page app such as the MLflow UI needs the wait)."""
    return browse(binary, profile, f"--virtual-time-budget={wait_ms}", "--dump-dom", url).stdout
