#!/usr/bin/python3
"""Loads the coordinator's dashboard in headless Chromium (Debian's `chromium`, driven over the
DevTools protocol with python3-websocket) and reports what the page showed.

usage: dashboard_check.py URL --load-cmd CMD --screenshot FILE [--timeout S]

Navigates to URL, waits for the page's first update, records the workers listed and the
heatmap's cell values, runs CMD (a shell command that changes the cluster's load), waits until
the cells change, writes a PNG screenshot, and prints one JSON object: workers, cells_before,
cells_after, errors (console errors, uncaught exceptions, failed loads), updates. Exits 1 when
the browser cannot be driven.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Page:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.errors = []

    def _event(self, msg):
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append("log: %s %s" % (e.get("text", ""), e.get("url", "")))

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._event(msg)

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError("evaluating %s: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError("timed out after %g s waiting for %s" % (timeout, what))


def start_browser(profile):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    proc = subprocess.Popen(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-port=0", "--user-data-dir=" + profile, "--window-size=1400,1100", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = os.path.join(profile, "DevToolsActivePort")
    wait_for(lambda: os.path.exists(port_file) and open(port_file).read().count("\n") >= 1, 30, "Chromium's DevTools port")
    port = int(open(port_file).read().split("\n")[0])

    def page_target():
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
            return next((t for t in json.load(r) if t.get("type") == "page"), None)
    return proc, wait_for(page_target, 30, "a page target")["webSocketDebuggerUrl"]


CELLS = "[...document.querySelectorAll('#heatmap rect.cell')].map(r => Number(r.dataset.value))"
WORKERS = "[...document.querySelectorAll('#workers tbody tr')].map(r => Number(r.dataset.worker))"


def main():
    args = sys.argv[1:]
    url = args[0]
    load_cmd = args[args.index("--load-cmd") + 1]
    screenshot = args[args.index("--screenshot") + 1]
    timeout = float(args[args.index("--timeout") + 1]) if "--timeout" in args else 60
    profile = tempfile.mkdtemp(prefix="sy-chromium-")
    proc = None
    try:
        proc, ws_url = start_browser(profile)
        page = Page(ws_url)
        for domain in ("Runtime", "Log", "Page"):
            page.call(domain + ".enable")
        page.call("Page.navigate", url=url)
        wait_for(lambda: (page.eval("Number(document.body && document.body.dataset.updates || 0)") or 0) >= 1, timeout,
                 "the page's first update")
        workers = page.eval(WORKERS)
        before = page.eval(CELLS)
        # Watch while the load command runs: once it ends, its rows leave the load window after a
        # while (all cells 0), so the change is looked for as it happens.
        load = subprocess.Popen(load_cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            after = wait_for(lambda: (lambda c: c if c != before and c and sum(c) > 0 else None)(page.eval(CELLS)),
                             timeout, "the heatmap to show the load command's rows")
        finally:
            output = load.communicate()[0]
        if load.returncode != 0:
            raise RuntimeError("the load command failed (%d): %s" % (load.returncode, output[-2000:]))
        shot = page.call("Page.captureScreenshot", format="png")
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        updates = page.eval("Number(document.body.dataset.updates)")
        page.eval("1")  # drain events that arrived meanwhile
        json.dump({"workers": workers, "cells_before": before, "cells_after": after, "errors": page.errors,
                   "updates": updates, "screenshot": screenshot}, sys.stdout)
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print("dashboard_check: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
