"""The chat page at GET /, in a real headless browser (Debian's chromium, driven over the Chrome
DevTools Protocol with the `websockets` package): the page loads and finds the model, a message
streams an answer, Stop ends a long answer early, a second turn carries the history, and Markdown is
rendered with HTML escaped. The screenshot is saved as target/chat-page.png.

Chromium is installed with apt-get where it is missing (as root); without it the tests are skipped
with the reason."""

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, HOST

SCREENSHOT = ROOT / "target/chat-page.png"
PAGE_TIMEOUT_S = 120


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        return shutil.which("chromium")
    return None


class Browser:
    """Headless chromium with one page, driven over CDP."""

    def __init__(self, exe):
        self.profile = tempfile.mkdtemp(prefix="baicai-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             "--window-size=1100,760", "--no-first-run", "--no-default-browser-check", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.2)
        self.port = int(open(port_file).read().split()[0])
        self.ws = None
        self.next_id = 0

    async def connect(self):
        import httpx
        import websockets
        for _ in range(50):
            targets = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=5).json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self.ws = await websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20)

    async def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), PAGE_TIMEOUT_S))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expr, timeout=PAGE_TIMEOUT_S, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = await self.js(expr)
            if v:
                return v
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or expr}")

    async def screenshot(self, path):
        r = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if not exe:
        pytest.skip("no chromium and it cannot be installed here (apt-get as root)")
    return exe


def type_and_send(text):
    return (f"(() => {{ const i = document.getElementById('input'); i.value = {json.dumps(text)};"
            " document.getElementById('send').click(); return true; })()")


ASSISTANTS = "document.querySelectorAll('.msg.assistant')"


async def drive(exe, server):
    b = Browser(exe)
    try:
        await b.connect()
        await b.call("Page.enable")
        await b.call("Page.navigate", url=f"http://{HOST}:{server.port}/")
        # The page loads and lists the served model (the key goes in the page's key field).
        await b.wait_for("document.readyState === 'complete' && !!document.getElementById('key')")
        await b.js(f"document.getElementById('key').value = {json.dumps(server.api_key or '')}; true")
        await b.js("loadModel().then(() => true)")
        model = await b.wait_for(f"document.getElementById('model').textContent === {json.dumps(server.model)}"
                                 " && document.getElementById('model').textContent", what="the model name")
        assert model == server.model

        # A message streams an answer: text appears before the answer is done.
        await b.js("const t = document.getElementById('temperature'); t.value = '0';"
                   " t.dispatchEvent(new Event('input')); true")
        await b.js("document.getElementById('maxtokens').value = '48'; true")
        await b.js(type_and_send("Write a Python function that adds two numbers, in a code block."))
        seen_partial = await b.wait_for(
            f"(() => {{ const a = {ASSISTANTS}; const m = a[a.length - 1];"
            " return m && m.querySelector('.body').textContent.length > 0 && !m.dataset.done; })()",
            what="streamed text before the end")
        assert seen_partial
        await b.wait_for(f"{ASSISTANTS}[0].dataset.done === 'done'", what="the first answer to finish")
        first = await b.js(f"({{text: {ASSISTANTS}[0].querySelector('.body').textContent,"
                           f" html: {ASSISTANTS}[0].querySelector('.body').innerHTML,"
                           f" stats: {ASSISTANTS}[0].querySelector('.stats').textContent}})")
        assert first["text"].strip(), first
        assert "tokens/s" in first["stats"], first
        assert "<pre><code" in first["html"], f"no code block rendered: {first['html'][:500]}"
        await b.screenshot(SCREENSHOT)

        # Stop: a long answer is cut short, and the page says so.
        await b.js("document.getElementById('maxtokens').value = '1500'; true")
        await b.js(type_and_send("Count from 1 to 500, one number per line."))
        await b.wait_for(f"{ASSISTANTS}.length === 2 && {ASSISTANTS}[1].querySelector('.body').textContent.length > 10",
                         what="the second answer to start")
        await b.js("document.getElementById('stop').click(); true")
        await b.wait_for(f"{ASSISTANTS}[1].dataset.done === 'stopped'", timeout=20, what="Stop to end the answer")
        stopped = await b.js(f"{ASSISTANTS}[1].querySelector('.stats').textContent")
        assert "stopped" in stopped
        assert await b.js("!document.getElementById('send').disabled && document.getElementById('stop').disabled")

        # The page keeps the history: a third turn sends all earlier messages.
        await b.js("window.__sent = null; const f = window.fetch; window.fetch = (u, o) => {"
                   " if (o && o.body) window.__sent = JSON.parse(o.body); return f(u, o); }; true")
        await b.js("document.getElementById('maxtokens').value = '8'; true")
        await b.js(type_and_send("Thanks! <b>bold?</b>"))
        await b.wait_for(f"{ASSISTANTS}.length === 3 && {ASSISTANTS}[2].dataset.done", what="the third answer")
        sent = await b.js("window.__sent")
        roles = [m["role"] for m in sent["messages"]]
        assert roles[0] == "system" and roles.count("user") == 3, roles
        # User text is escaped, not rendered as HTML.
        users = await b.js("[...document.querySelectorAll('.msg.user .body')].map(e => e.innerHTML)")
        assert "&lt;b&gt;bold?&lt;/b&gt;" in users[-1], users[-1]
    finally:
        b.close()


def test_chat_page_in_a_browser(server, chromium):
    asyncio.run(drive(chromium, server))
    assert SCREENSHOT.exists() and SCREENSHOT.stat().st_size > 5000


def test_markdown_renderer_escapes_html(server, chromium):
    async def run():
        b = Browser(chromium)
        try:
            await b.connect()
            await b.call("Page.navigate", url=f"http://{HOST}:{server.port}/")
            await b.wait_for("typeof renderMarkdown === 'function'")
            cases = {
                "<script>alert(1)</script>": "&lt;script&gt;alert(1)&lt;/script&gt;",
                "**bold** and `a<b`": "<strong>bold</strong> and <code>a&lt;b</code>",
                "```py\nx = '<i>'\n```": '<pre><code class="lang-py">x = &#39;&lt;i&gt;&#39;</code></pre>',
                "[x](javascript:alert(1))": "[x](javascript:alert(1))",
                "- a\n- b": "<ul><li>a</li><li>b</li></ul>",
            }
            for src, want in cases.items():
                got = await b.js(f"renderMarkdown({json.dumps(src)})")
                assert want in got, f"{src!r}: {got!r}"
        finally:
            b.close()
    asyncio.run(run())


def test_page_makes_no_external_requests(server):
    r = server.get("/", headers={})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    for needle in ("http://", "https://", "//cdn", "<link", "src="):
        assert needle not in html.replace("https?:\\/\\/", ""), needle
