"""What the browser costs over the command line, on the same file and weights, measured in one run.

Times, for ``total --fast`` on one image:
  (a) the command line: ``python -m totalseg_engine -i IMAGE -o seg.nii.gz --ml --fast --statistics -d cpu``;
  (b) the web app: a new session (launcher → session process → page ready), opening the upload, and Run until
      the segment list is shown (queue, engine child process, import into the scene, 3D surfaces).
Prints each and the ratio (b) run / (a). Needs the web extra, Playwright and Debian's Chromium:

    python benchmarks/web_overhead.py --weights-home ~/.cache/totalseg-benchmarks/trained-head2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))
from web_support import launch_chromium, start_launcher  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "totalsegmentator-tests"


def command_line_seconds(image: Path, env: dict, folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "totalseg_engine", "-i", str(image), "-o", str(folder / "seg.nii.gz"),
                    "--ml", "--fast", "--statistics", "-d", "cpu"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def web_seconds(image: Path, weights_home: Path, folder: Path) -> dict[str, float]:
    launcher, port = start_launcher(weights_home, folder / "work")
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            times = {}
            started = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector('[data-testid="run"]', timeout=180_000)
            times["new session"] = time.perf_counter() - started
            started = time.perf_counter()
            page.set_input_files('[data-testid="upload"]', str(image))
            page.wait_for_selector(f'[data-testid="input-name"]:has-text("{image.name}")', timeout=180_000)
            times["upload and open"] = time.perf_counter() - started
            page.click('[data-testid="speed"]')
            page.click('.v-overlay--active .v-list-item:has-text("fast")')
            started = time.perf_counter()
            page.click('[data-testid="run"]')
            page.wait_for_selector('[data-testid="segments"]', timeout=900_000)
            times["run until shown"] = time.perf_counter() - started
            browser.close()
        return times
    finally:
        launcher.terminate()
        launcher.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-home", type=Path, required=True, help="a TOTALSEG_HOME_DIR with total --fast")
    parser.add_argument("--input", type=Path, default=DATA / "example_ct.nii.gz")
    parser.add_argument("--repeats", type=int, default=3, help="(a) and (b) alternate this many times")
    args = parser.parse_args()
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(args.weights_home)}
    print(f"input {args.input.name}, total --fast, CPU ({os.cpu_count()} cores); seconds per repeat")
    ratios = []
    for repeat in range(1, args.repeats + 1):
        with tempfile.TemporaryDirectory() as tmp:
            cli = command_line_seconds(args.input, env, Path(tmp))
            web = web_seconds(args.input, args.weights_home, Path(tmp))
        ratios.append(web["run until shown"] / cli)
        steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in web.items())
        print(f"{repeat}: (a) command line {cli:.1f}; (b) web: {steps}; run (b)/(a) {ratios[-1]:.2f}x")
    print(f"median run (b)/(a): {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
