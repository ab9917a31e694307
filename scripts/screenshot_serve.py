"""Serve the demo's models and photograph the web page (the README's screenshot).

    bash scripts/demo.sh                                  # first: the demo's exports under runs/demo
    .venv/bin/python scripts/screenshot_serve.py --out docs/img/serve_demo.png

Starts ``mxr0 serve --model runs/demo/report/export --classifier runs/demo/classify/export`` on a free loopback
port, uploads a held-out phantom chest radiograph in headless Chromium (Debian's ``chromium`` and
``chromium-driver``), waits for the streamed report and the classifier bars, and saves a screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/report/export")
    ap.add_argument("--classifier", default="runs/demo/classify/export")
    ap.add_argument("--data", default="data_cache/phantom", help="a prepared phantom folder: one test image is uploaded")
    ap.add_argument("--out", default="docs/img/serve_demo.png")
    args = ap.parse_args()
    for p in (args.model, args.classifier):
        if not Path(p, "config.json").exists():
            sys.exit(f"{p}: not an export folder; run `bash scripts/demo.sh` first")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    records = [json.loads(x) for f in sorted(Path(args.data).glob("*.jsonl")) for x in f.read_text().splitlines() if x]
    study = next(r for r in records if r.get("split") == "test" and r.get("anatomy") == "chest")
    image = Path(args.data) / study["images"][0]["path"]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mxr0", "serve", "--model", args.model, "--classifier",
                               args.classifier, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
            opts.add_argument(a)
        driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url + "/")
            wait.until(lambda d: d.find_element(By.ID, "model-name").text.strip())
            driver.find_element(By.ID, "frontal").send_keys(str(image.resolve()))
            wait.until(lambda d: d.find_element(By.ID, "report").get_attribute("data-state") == "done")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classifier .row")) > 0)
            driver.execute_script("window.scrollTo(0, 0)")
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
            print(f"{out}: {out.stat().st_size} bytes; study {study['study_id']}; report: "
                  f"{driver.find_element(By.ID, 'report').text.strip()[:200]!r}")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
