"""The course website, checked as a reader sees it: built with `mkdocs build --strict` (every notebook
executed), served on 127.0.0.1, and loaded page by page in headless Chromium.

Needs the `docs` extra (`pip install -e ".[docs]"`) and Debian's `chromium` and `chromium-driver`;
skips with that reason where they are missing (CI installs them). With TINYDDIM_SITE_DIR set to a
finished build (.ci/run builds the site first), the tests check that build instead of building again.
Screenshots of every page go to site-screenshots/ (ignored by git) for a person to look at.
"""

import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = ROOT / "site-screenshots"
PAGE_TIMEOUT = 60  # seconds for one page to load and typeset its math

for module in ("mkdocs", "material", "mkdocs_jupyter", "mkdocstrings_handlers.python", "mathjax", "selenium"):
    pytest.importorskip(module, reason=f"{module} is missing: pip install -e '.[docs]' to build the site")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site: TINYDDIM_SITE_DIR, or a fresh `mkdocs build --strict` (warnings are errors)."""
    given = os.environ.get("TINYDDIM_SITE_DIR")
    if given:
        path = Path(given).resolve()
        assert (path / "index.html").is_file(), f"TINYDDIM_SITE_DIR={given} holds no built site"
        return path
    path = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               NO_MKDOCS_2_WARNING="1")
    env.pop("TINYDDIM_SITE_EXECUTE", None)
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    return path


def pages(site):
    return sorted(site.rglob("*.html"))


class _Assets(html.parser.HTMLParser):
    """The addresses a page loads by itself: scripts, stylesheets, icons, images, media, frames."""

    def __init__(self):
        super().__init__()
        self.urls, self.inline_urls, self.in_script = [], [], False

    def handle_data(self, data):
        if self.in_script:  # an inline script that would import or fetch from outside
            self.inline_urls += re.findall(r"""https?://[^\s"'`)]+""", data)

    def handle_endtag(self, tag):
        self.in_script = self.in_script and tag != "script"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.in_script = tag == "script" and not attrs.get("src")
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "object" and attrs.get("data"):
            self.urls.append(attrs["data"])


def test_the_built_site_loads_nothing_from_the_network(site):
    external = re.compile(r"^(https?:)?//", re.IGNORECASE)
    found = []
    for page in pages(site):
        parser = _Assets()
        parser.feed(page.read_text(encoding="utf-8"))
        found += [f"{page.relative_to(site)}: {url}" for url in parser.urls if external.match(url.strip())]
        found += [f"{page.relative_to(site)}: {url} (in a script)" for url in parser.inline_urls]
    css_url = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])\s*((?:https?:)?//[^"')\s]+)""", re.IGNORECASE)
    for sheet in site.rglob("*.css"):
        found += [f"{sheet.relative_to(site)}: {url}" for url in css_url.findall(sheet.read_text(encoding="utf-8"))]
    assert not found, "the site loads these from outside:\n" + "\n".join(found[:20])
    assert (site / "assets/mathjax/tex-svg.js").is_file()  # the math renderer is served by the site itself


def test_every_notebook_is_a_page_in_order_with_its_file(site):
    assert NOTEBOOKS, "no notebooks"
    for path in NOTEBOOKS:
        page = site / "notebooks" / f"{path.stem}.html"
        assert page.is_file(), f"no page for {path.name}"
        text = page.read_text(encoding="utf-8")
        assert f'href="{path.name}"' in text, f"{page.name} does not link to its notebook file"
        assert (site / "notebooks" / path.name).read_bytes() == path.read_bytes()
        assert "jp-OutputArea-output" in text, f"{page.name} shows no output: was the notebook executed?"
        assert "cdnjs" not in text and "Load mathjax" not in text  # nbconvert's MathJax 2 and mermaid are removed
    home = (site / "index.html").read_text(encoding="utf-8")
    positions = [home.find(f'href="notebooks/{path.stem}.html"') for path in NOTEBOOKS]
    assert -1 not in positions and positions == sorted(positions), "the course is not in the nav in name order"


def test_api_entries_link_to_their_source_line(site):
    """Each link of an API page goes to the anchored line on the source page, and that line of the module
    is the `def` or `class` (or its first decorator) of the entry."""
    link = re.compile(r'href="\.\./source/(\w+)\.html#(__codelineno-0-(\d+))"')
    checked = 0
    for page in sorted((site / "api").glob("*.html")):
        for module, anchor, line in set(link.findall(page.read_text(encoding="utf-8"))):
            source = (site / "source" / f"{module}.html").read_text(encoding="utf-8")
            assert f'id="{anchor}"' in source, f"{page.name}: source/{module}.html has no line {line}"
            code = (ROOT / "tinyddim" / f"{module}.py").read_text(encoding="utf-8").splitlines()[int(line) - 1]
            assert re.match(r"\s*(def |class |async def |@)", code), f"{module}.py line {line} is {code!r}"
            checked += 1
    assert checked > 50  # 249 links at the time of writing
    ddim = (site / "api" / "ddim.html").read_text(encoding="utf-8")
    line = next(i for i, code in enumerate((ROOT / "tinyddim/ddim.py").read_text().splitlines(), 1)
                if code.startswith("def ddim_step("))
    assert f'href="../source/ddim.html#__codelineno-0-{line}"' in ddim


def test_docstrings_read_as_in_the_code(site):
    """The Unicode equation of ddim_step's docstring is a code block on its API page, columns kept."""
    import tinyddim.ddim

    equation = next(line.strip() for line in tinyddim.ddim.ddim_step.__doc__.splitlines() if "x_prev = " in line)
    text = (site / "api" / "ddim.html").read_text(encoding="utf-8")
    section = text[text.find('id="tinyddim.ddim.ddim_step"'):]
    section = section[:section.find('class="doc doc-heading"', 100)]
    blocks = [re.sub(r"<[^>]+>", "", block).replace("&quot;", '"').replace("&amp;", "&")
              for block in re.findall(r"<pre[^>]*>(.*?)</pre>", section, re.DOTALL)]
    assert [block for block in blocks if equation in block], blocks
    assert "(DDIM Eq. 12)" in text and "(DDIM Eq. 16)" in text


def test_a_failing_notebook_fails_the_build(tmp_path):
    """A copy of the site's sources whose notebooks are one-cell stand-ins, one of them raising: the strict
    build stops with the name of the notebook and the error, and writes no site."""
    import nbformat

    for name in ("mkdocs.yml", "README.md", "benchmarks/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, tmp_path / name)
    for folder in ("docs_src", "docs", "tinyddim"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "bundled"))
    (tmp_path / "notebooks").mkdir()
    for i, path in enumerate(NOTEBOOKS):
        notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}})
        code = "raise ValueError('this cell fails on purpose')" if i == 1 else "1 + 1"
        notebook.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), nbformat.v4.new_code_cell(code)]
        nbformat.write(notebook, tmp_path / "notebooks" / path.name)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(tmp_path))
    env.pop("TINYDDIM_SITE_EXECUTE", None)
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "out")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert f"notebooks/{NOTEBOOKS[1].name} fails" in run.stderr and "this cell fails on purpose" in run.stderr
    assert not (tmp_path / "out" / "index.html").exists()


# ---- in a browser --------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    """The site on 127.0.0.1 at a free port, for the tests of this module."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.set_script_timeout(PAGE_TIMEOUT)
    yield driver
    driver.quit()


def _requests(driver):
    """The URLs the browser asked for since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


READY = """
const done = arguments[arguments.length - 1];
const mathjax = () => (window.MathJax && MathJax.startup && MathJax.startup.promise) ?
    MathJax.startup.promise.then(() => done("ok"), (e) => done("MathJax: " + e)) : done("no MathJax");
if (document.readyState === "complete") { mathjax(); } else { window.addEventListener("load", mathjax); }
"""

INSPECT = """
const article = document.querySelector("article") || document.body;
const copy = article.cloneNode(true);
copy.querySelectorAll("pre, code, script, style, mjx-container").forEach((node) => node.remove());
return {
    math: article.querySelectorAll("mjx-container").length,
    mathErrors: article.querySelectorAll("mjx-merror, [data-mjx-error]").length,
    rawMath: (copy.textContent.match(/\\$\\$|\\\\\\[|\\\\\\(/g) || []).length,
    images: Array.from(document.images).map((img) => [img.currentSrc || img.src, img.complete, img.naturalWidth]),
    height: document.documentElement.scrollHeight,
    prev: (document.querySelector("a.md-footer__link--prev") || {}).href || null,
    next: (document.querySelector("a.md-footer__link--next") || {}).href || null,
};
"""


def _load(driver, url, shot, allowed_errors=()):
    """Load `url`, wait for its math, check it as a reader would, save a screenshot; return what was seen."""
    _requests(driver)
    driver.get_log("browser")
    driver.get(url)
    state = driver.execute_async_script(READY)
    assert state == "ok", f"{url}: {state}"
    seen = driver.execute_script(INSPECT)
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
              and not any(allowed in entry["message"] for allowed in allowed_errors)]
    assert not errors, f"{url} logs errors: {errors}"
    base = url.split("/")[0] + "//" + url.split("/")[2] + "/"  # file:/// for a page opened from disk
    outside = [u for u in _requests(driver) if not u.startswith((base, "data:", "blob:", "about:"))]
    assert not outside, f"{url} asks the network for {outside}"
    broken = [src for src, complete, width in seen["images"] if not complete or width == 0]
    assert not broken, f"{url}: images that did not load: {broken}"
    assert seen["mathErrors"] == 0, f"{url}: MathJax could not typeset {seen['mathErrors']} formulas"
    assert seen["rawMath"] == 0, f"{url}: raw TeX delimiters left in the text"
    SCREENSHOTS.mkdir(exist_ok=True)
    driver.set_window_size(1280, min(max(seen["height"], 900), 12000))
    time.sleep(0.2)
    driver.save_screenshot(str(SCREENSHOTS / f"{shot}.png"))
    driver.set_window_size(1280, 900)
    return seen


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_course_page_in_the_browser(path, server, browser):
    seen = _load(browser, f"{server}notebooks/{path.stem}.html", path.stem)
    assert [img for img in seen["images"] if img[0].startswith("data:image/png")], "no figure on the page"
    if "$" in "".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"]
                      if cell["cell_type"] == "markdown"):
        assert seen["math"] > 0, "the notebook has TeX but the page has no typeset math"
    i = NOTEBOOKS.index(path)
    if i > 0:
        assert seen["prev"].endswith(f"notebooks/{NOTEBOOKS[i - 1].stem}.html"), seen["prev"]
    if i + 1 < len(NOTEBOOKS):
        assert seen["next"].endswith(f"notebooks/{NOTEBOOKS[i + 1].stem}.html"), seen["next"]


@pytest.mark.parametrize("page", ["index", "tables", "speed", "benchmarks", "api/index", "api/ddim", "api/schedules", "api/unet",
                                  "source/ddim"])
def test_other_pages_in_the_browser(page, server, browser):
    seen = _load(browser, f"{server}{page}.html", page.replace("/", "_"))
    if page == "index":
        assert seen["images"], "the home page shows no picture"


def test_search_finds_eq_12(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}index.html")
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")  # in the header at this width
    box.click()
    box.send_keys("Eq. 12")
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item a"))
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")]
    assert any("notebooks/02_one_ddim_step.html" in link for link in links), links
    assert any("api/ddim.html" in link for link in links), links
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "search_eq_12.png"))


@pytest.mark.parametrize("page", ["index", "notebooks/02_one_ddim_step", "api/ddim"])
def test_pages_opened_from_disk(page, site, browser):
    """Opened as a file, a page still shows its math and its figures, and asks the network for nothing.
    Only the search box needs a server: from disk the theme looks for search/search_index.js (made by its
    offline plugin, which needs a shim from a CDN) and logs that it is missing, the one error allowed here."""
    seen = _load(browser, (site / f"{page}.html").as_uri(), "disk_" + page.replace("/", "_"),
                 allowed_errors=("search/search_index.js",))
    if page != "api/ddim":
        assert seen["images"], "no figure"
    if page.startswith("notebooks/"):
        assert seen["math"] > 0, "no typeset math"
