"""A real headless Chromium (Debian's `chromium`) for checks on rendered HTML.

`inspect(page)` loads the page in an iframe of a small probe page and, once it
has been laid out, reads what a reader would see: the visible text, where
elements sit, whether images decoded, whether any script ran. Chromium then
prints the probe page's DOM (--dump-dom), which carries that JSON out.
`screenshot(page)` takes a PNG at a fixed window size.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

WIDTH, HEIGHT = 1200, 2400

_PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<iframe id="f" src="{src}" style="width:{w}px;height:{h}px;border:0"></iframe>
<pre id="out">not loaded</pre>
<script>
window.pwned = 0;
document.getElementById("f").onload = function () {{
  const d = this.contentDocument, w = this.contentWindow;
  const box = (sel) => {{
    const e = d.querySelector(sel);
    if (!e) return null;
    const r = e.getBoundingClientRect(), s = w.getComputedStyle(e);
    return {{top: r.top, left: r.left, width: r.width, height: r.height,
             visible: r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none",
             color: s.color, background: s.backgroundColor, text: e.innerText}};
  }};
  const imgs = Array.from(d.images).map((i) => ({{cls: i.className, natural_width: i.naturalWidth,
                                                   complete: i.complete}}));
  const out = {{title: d.title, text: d.body.innerText, scripts: d.scripts.length,
               pwned: window.pwned + (w.pwned || 0), images: imgs,
               bars: d.querySelectorAll("figure.chart rect.bar").length,
               boxes: {{}}}};
  for (const sel of {selectors}) out.boxes[sel] = box(sel);
  document.getElementById("out").textContent = JSON.stringify(out);
}};
</script></body></html>
"""


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is needed for the HTML report tests (apt-get install chromium)")
    return exe


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--allow-file-access-from-files",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def inspect(page: Path, selectors: list[str], tmp: Path) -> dict:
    """What Chromium laid out for page (see the module docstring)."""
    probe = tmp / "probe.html"
    probe.write_text(_PROBE.format(src=page.resolve().as_uri(), w=WIDTH, h=HEIGHT,
                                   selectors=json.dumps(selectors)))
    r = _run(["--dump-dom", probe.as_uri()], tmp)
    m = re.search(r'<pre id="out">(.*?)</pre>', r.stdout, re.S)
    assert m, f"chromium printed no probe result: {r.stderr[-2000:]}"
    text = html.unescape(m.group(1))
    assert text != "not loaded", "the report did not load in chromium"
    return json.loads(text)


def screenshot(page: Path, tmp: Path, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    png = tmp / (page.stem + ".png")
    r = _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()], tmp)
    assert png.exists(), f"chromium wrote no screenshot: {r.stderr[-2000:]}"
    return png
