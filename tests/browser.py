"""A real headless Chromium, driven over the DevTools protocol, for the tests that look at pages.

`open_page(url)` loads a page in Debian's `chromium` (apt-get install chromium; .ci/run installs it),
waits until it is loaded and quiet, and returns what a person would notice: the console errors and
failed loads, the result of a JavaScript probe of the DOM, and a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return os.environ.get("SSLSEARCH_CHROMIUM") or next((p for b in BROWSERS if (p := shutil.which(b))), None)


@dataclass
class Page:
    errors: list[str] = field(default_factory=list)    # console errors, uncaught exceptions, failed loads
    probe: object = None                               # what the JavaScript probe returned
    screenshot: bytes = b""                            # PNG of the whole page


class _Session:
    def __init__(self, ws_url: str):
        import websocket  # websocket-client (the test extra)

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.settimeout(120)  # wait_for and drain shorten it
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def drain(self, seconds: float) -> None:
        """Collect events for `seconds` (late console errors, failed image loads)."""
        import websocket

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                self.events.append(json.loads(self.ws.recv()))
            except (websocket.WebSocketTimeoutException, TimeoutError):
                return


def _errors(events: list[dict], ignore: tuple[str, ...]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            errors.append(f"console.error: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            errors.append(f"load failed: {params.get('errorText')} ({params.get('type')})")
    return [e for e in errors if not any(i in e for i in ignore)]


def open_page(url: str, probe_js: str, *, width: int = 1280, height: int = 900, settle_s: float = 1.0,
              ready_js: str | None = None, ready_timeout_s: float = 60.0, ignore: tuple[str, ...] = (),
              full_page: bool = True) -> Page:
    """Load `url` in headless Chromium; `ready_js` (an expression) is polled until true before probing."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found; apt-get install chromium (or set SSLSEARCH_CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="sslsearch-chromium-")
    process = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
         f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start: {process.stderr.read()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            target = next(t for t in json.load(response) if t.get("type") == "page")
        session = _Session(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            session.call(f"{domain}.enable")
        session.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        session.call("Page.navigate", url=url)
        session.wait_for("Page.loadEventFired", timeout=60)
        if ready_js is not None:
            deadline = time.monotonic() + ready_timeout_s
            while not session.call("Runtime.evaluate", expression=ready_js, returnByValue=True)["result"].get("value"):
                if time.monotonic() > deadline:
                    break  # probe anyway: the test's assertions say what is missing
                time.sleep(0.5)
        session.drain(settle_s)
        probe = session.call("Runtime.evaluate", expression=probe_js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in probe:
            raise RuntimeError(f"probe failed: {probe['exceptionDetails']}")
        clip = {}
        if full_page:
            size = session.call("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"clip": {"x": 0, "y": 0, "width": width, "height": min(size["height"], 16000), "scale": 1}}
        shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page, **clip)
        page = Page(errors=_errors(session.events, ignore), probe=probe["result"].get("value"),
                    screenshot=base64.b64decode(shot["data"]))
        session.ws.close()
        return page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
