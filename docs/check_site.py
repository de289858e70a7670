"""Opens the built site in headless Chromium and fails on a page that does not render.

For the home page, two API pages and a guide: a screenshot (PNG), the rendered DOM (a
non-empty body, the sidebar navigation, the page's own heading) and the browser console
(no JavaScript error). Needs Debian's ``chromium`` (``apt-get install chromium``).

    python docs/check_site.py [--site docs/_build/html] [--out docs/_build/screenshots]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PAGES = {
    "home": ("index.html", "jdopt"),
    "JDOptimizer": ("generated/jdopt.JDOptimizer.html", "JDOptimizer"),
    "UPGrad": ("generated/jdopt.aggregation.UPGrad.html", "UPGrad"),
    "method table": ("guides/methods.html", "Aggregators and weightings"),
}
TALL = {"method table"}  # screenshots long enough to show the table
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("Chromium is not installed: `apt-get install chromium` (Debian).")


def run(browser: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)


def check(browser: str, page: Path, heading: str, screenshot: Path, height: int) -> list[str]:
    """The problems of one page (none: it rendered)."""
    url = page.resolve().as_uri()
    problems = []
    shot = run(browser, url, f"--screenshot={screenshot}", f"--window-size=1280,{height}")
    if shot.returncode != 0 or not screenshot.exists() or screenshot.stat().st_size < 10_000:
        problems.append(f"no screenshot ({shot.returncode}): {shot.stderr[-500:]}")
    dom = run(browser, url, "--dump-dom", "--enable-logging=stderr", "--v=0")
    body = dom.stdout.split("<body", 1)[-1]
    if len(body) < 2_000:
        problems.append(f"an empty body ({len(body)} characters)")
    if "sidebar-tree" not in body:
        problems.append("no navigation (furo's sidebar tree)")
    if heading not in body:
        problems.append(f"no {heading!r} on the page")
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    problems += [f"console: {line}" for line in errors]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="docs/_build/html")
    parser.add_argument("--out", default="docs/_build/screenshots")
    args = parser.parse_args(argv)
    browser, site, out = chromium(), Path(args.site), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = False
    for name, (path, heading) in PAGES.items():
        height = 2400 if name in TALL else 900
        problems = check(
            browser, site / path, heading, out / f"{name.replace(' ', '_')}.png", height
        )
        print(f"{name}: {'rendered' if not problems else '; '.join(problems)}")
        failed |= bool(problems)
    print(f"screenshots in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
