"""MkDocs hooks that build the tinyddim site from the files of the repository, not from copies of them.

- The course: every `notebooks/*.ipynb`, in name order, fills the nav entry `Course: []` (a new notebook
  appears without touching mkdocs.yml). Each build executes them here, as many at once as there are CPU
  cores (nbclient, one kernel each, a cell that fails fails the build), and mkdocs-jupyter turns the
  executed copies into pages; the site offers the repository's notebook file (no outputs) beside each page.
  `extra.execute_notebooks: false` (TINYDDIM_SITE_EXECUTE=false) shows them unexecuted, for a quick preview.
- Includes: a line `<!-- include FILE -->`, `<!-- include FILE ## Heading -->` (that section of FILE, up to
  the next heading of the same level or higher), `<!-- include FILE (intro) -->` (the text before the first
  `## ` heading, without the `# ` title), `<!-- include FILE (demote) -->` (its headings one level down) or
  `<!-- include-optional FILE ... -->` (nothing when FILE is absent) is replaced by that text. Its links
  are rewritten for the site: to the page that shows the linked file, to the figure copied from docs/, or
  to plain text when the site has no page for the file.
- API and source pages, one each per module of the package: `api/NAME.md` is mkdocstrings' page of
  `tinyddim.NAME`, in the nav in the order of `extra.api_order` (a new module goes at the end);
  `source/NAME.md` shows `tinyddim/NAME.py` with numbered, anchored lines, and each API entry links to
  its first line (the templates write `tinyddim-source:MODULE#LINE`, rewritten here).
- Math offline: MathJax comes from the `mathjax` Python package (django-static-mathjax on PyPI) and is
  copied into `assets/mathjax/`; nbconvert's own MathJax 2 and mermaid.js loaders (CDN addresses) are
  removed from the notebook pages.
"""

import asyncio
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File
from mkdocs.utils import get_relative_url

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 600  # seconds; each notebook runs in well under a minute on a laptop CPU
FIGURE_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".gif"}
# repository file -> the site page that shows it (links to these files go to the page)
PAGES = {
    "README.md": "index.md",
    "benchmarks/README.md": "benchmarks.md",
    "docs/teaching_tables.md": "tables.md",
    "docs/table1.md": "tables.md",
}
INCLUDE = re.compile(r"^<!-- (include|include-optional) (\S+)(?: (.+?))? -->[ \t]*$", re.MULTILINE)
LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")
MATHJAX_V2 = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL)
MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?<!-- End of mermaid configuration -->',
                     re.DOTALL)  # nbconvert's loader of mermaid.js from a CDN (no notebook here draws a diagram)
SOURCE_LINK = re.compile(r'href="tinyddim-source:([\w.]+)#(\d+)"')


_executed = None  # the folder holding this build's executed notebooks (removed after the build)


def notebooks():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def execute_notebooks(paths, out_dir, workers):
    """Run each notebook top to bottom in its own python3 kernel, `workers` at a time, into out_dir."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # each kernel gets one BLAS thread unless told otherwise: the kernels already share out the cores
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))

    async def run(path, gate):
        async with gate:
            notebook = nbformat.read(path, as_version=4)
            client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                                    resources={"metadata": {"path": str(path.parent)}})
            try:
                await client.async_execute(env=env)
            except CellExecutionError as err:
                raise PluginError(f"notebooks/{path.name} fails:\n{err}") from None
            nbformat.write(notebook, out_dir / path.name)

    async def run_all():
        gate = asyncio.Semaphore(workers)
        await asyncio.gather(*(run(path, gate) for path in paths))

    asyncio.run(run_all())


def modules():
    """The package's modules by name (`ddim`, ...), without `__init__` and `__main__`."""
    return sorted(path.stem for path in (ROOT / "tinyddim").glob("*.py") if not path.name.startswith("_"))


def api_modules(config):
    """The modules in the order of `extra.api_order`, then any module it does not name, by name."""
    order = [name for name in config.extra.get("api_order", []) if name in modules()]
    return order + [name for name in modules() if name not in order]


def on_config(config):
    """Fill the nav entries `Course: []` (the notebooks, in name order) and `API reference: []`."""
    fill = {"Course": [f"notebooks/{path.name}" for path in notebooks()],
            "API reference": ["api/index.md"] + [f"api/{name}.md" for name in api_modules(config)]}
    for entry in config.nav or []:
        if isinstance(entry, dict) and len(entry) == 1:
            (title, value), = entry.items()
            if title in fill and value == []:
                entry[title] = fill.pop(title)
    if fill:
        raise PluginError(f"mkdocs.yml: the nav needs the entries {', '.join(f'`- {t}: []`' for t in fill)}")
    return config


def _mathjax_root():
    import mathjax  # django-static-mathjax: MathJax 3 as a Python package (no Django needed to read its files)

    root = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (root / "tex-svg.js").is_file():
        raise PluginError(f"the mathjax package has no es5/tex-svg.js under {root}")
    return root


@event_priority(100)  # before mkdocs-jupyter, which turns .ipynb files into pages
def on_files(files, config):
    """Add the notebooks, the figures of docs/, MathJax and one source page per module to the site."""
    global _executed
    src_dir = ROOT
    if config.extra.get("execute_notebooks", True):
        _executed = Path(tempfile.mkdtemp(prefix="tinyddim-site-"))
        (_executed / "notebooks").mkdir()
        execute_notebooks(notebooks(), _executed / "notebooks", min(len(notebooks()), os.cpu_count() or 1))
        src_dir = _executed
    for path in notebooks():
        # a File with a real src_dir (mkdocs-jupyter's wrapper needs one): the page of notebooks/NAME.ipynb
        # is notebooks/NAME.html
        files.append(File(f"notebooks/{path.name}", str(src_dir), config.site_dir, config.use_directory_urls))
    for path in sorted((ROOT / "docs").iterdir()):
        if path.suffix.lower() in FIGURE_SUFFIXES:
            files.append(File.generated(config, f"figures/{path.name}", abs_src_path=str(path)))
    mathjax = _mathjax_root()
    for path in sorted(mathjax.rglob("*")):
        rel = path.relative_to(mathjax).as_posix()
        # tex-svg.js and the components it loads on demand (TeX extensions, menu, assistive MathML)
        if path.is_file() and ("/" in rel or rel == "tex-svg.js") and not rel.startswith(("sre/", "output/chtml")):
            files.append(File.generated(config, f"assets/mathjax/{rel}", abs_src_path=str(path)))
    for name in modules():
        source = _source_page(ROOT / "tinyddim" / f"{name}.py")
        api = (f"# tinyddim.{name}\n\nThe whole file, with line numbers: "
               f"[tinyddim/{name}.py](../source/{name}.md).\n\n::: tinyddim.{name}\n")
        files.append(File.generated(config, f"source/{name}.md", content=source))
        files.append(File.generated(config, f"api/{name}.md", content=api))
    return files


def _source_page(path):
    code = path.read_text(encoding="utf-8")
    api = f"[the API reference of tinyddim.{path.stem}](../api/{path.stem}.md)"
    # the whole width for 110-column code; left out of search, where the API pages stand for the code
    return ("---\nhide:\n  - navigation\n  - toc\nsearch:\n  exclude: true\n---\n\n"
            f"# tinyddim/{path.name}\n\n{len(code.splitlines())} lines; {api}.\n\n"
            f'````python linenums="1"\n{code}\n````\n')


def _section(text, heading, where):
    """The lines of `text` under `heading` (e.g. "## Speed") up to the next heading of its level or higher."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, out, inside, fence = text.splitlines(), [], False, False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        is_heading = not fence and re.match(r"#{1,6} ", line)
        if is_heading and inside and len(line) - len(line.lstrip("#")) <= level:
            break
        if inside:
            out.append(line)
        elif line.strip() == heading.strip():
            inside = True
            out.append(line)
    if not inside:
        raise PluginError(f"{where}: no heading {heading!r} to include")
    return "\n".join(out)


def _intro(text):
    """The text before the first `## ` heading, without the `# ` title line."""
    out = []
    for line in text.splitlines():
        if line.startswith("## "):
            break
        if not line.startswith("# "):
            out.append(line)
    return "\n".join(out).strip("\n")


def _rewrite_links(text, source, page_src):
    """Links of `source` (a repository path) rewritten for the page `page_src` (a docs_dir path)."""
    page_dir = posixpath.dirname(page_src)

    def repl(match):
        label, target = match.groups()
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        target, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), target))
        if repo_path in PAGES:
            site_path = PAGES[repo_path]
        elif repo_path.startswith("notebooks/") and repo_path.endswith(".ipynb"):
            site_path = repo_path
        elif repo_path.startswith("docs/") and posixpath.splitext(repo_path)[1].lower() in FIGURE_SUFFIXES:
            site_path = "figures/" + posixpath.basename(repo_path)
        elif repo_path.startswith("tinyddim/") and repo_path.endswith(".py"):
            site_path = "source/" + posixpath.basename(repo_path)[:-3] + ".md"
        else:  # a file the site does not show: keep the words, drop the link
            return f"`{repo_path}`" if label.startswith("![") else label[1:-1]
        url = posixpath.relpath(site_path, page_dir or ".")
        return f"{label}({url}{'#' + anchor if anchor else ''})"

    return LINK.sub(repl, text)


def on_page_markdown(markdown, page, config, files):
    def repl(match):
        kind, name, part = match.groups()
        path = ROOT / name
        if not path.is_file():
            if kind == "include-optional":
                return ""
            raise PluginError(f"{page.file.src_path}: cannot include {name}: no such file")
        text = path.read_text(encoding="utf-8")
        if part == "(intro)":
            text = _intro(text)
        elif part == "(demote)":  # the file's headings one level down, under the page's own title
            text = re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)
        elif part:
            text = _section(text, part, f"{page.file.src_path} including {name}")
        return _rewrite_links(text, name, page.file.src_path)

    return INCLUDE.sub(repl, markdown)


def _notebook_title(path):
    """The first `# ` heading of the notebook's markdown, its `code` spans as plain text."""
    import json

    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].replace("`", "").strip()
    return None


def on_page_content(html, page, config, files):
    src = page.file.src_uri
    if src.startswith("notebooks/") and src.endswith(".ipynb"):
        html = MATHJAX_V2.sub("", html)  # nbconvert's MathJax 2 from a CDN; the site loads its own MathJax 3
        html = MERMAID.sub("", html)
        name = posixpath.basename(src)
        page.title = _notebook_title(NOTEBOOKS / name) or page.title  # mkdocs-jupyter's drops `code` spans
        link = (f'<p class="tinyddim-notebook-file">The notebook: <a href="{name}" download>{name}</a> '
                f'(this page shows it as executed when the site was built; '
                f'open it with <code>jupyter lab notebooks/{name}</code>).</p>')
        html = html.replace("</h1>", "</h1>\n" + link, 1) if "</h1>" in html else link + html
    if src.startswith("api/"):
        html = f'<div class="mathjax_ignore">{html}</div>'  # docstrings write their math in Unicode, not TeX

    def source_link(match):
        module, line = match.groups()
        target = f"source/{module.rsplit('.', 1)[-1]}.html"
        return f'href="{get_relative_url(target, page.url)}#__codelineno-0-{line}"'

    return SOURCE_LINK.sub(source_link, html)


def on_post_build(config):
    """Beside each notebook page, the notebook file as committed; then remove the executed copies."""
    for path in notebooks():
        shutil.copyfile(path, Path(config.site_dir) / "notebooks" / path.name)
    on_build_error(None)


def on_build_error(error, **kwargs):
    global _executed
    if _executed is not None:
        shutil.rmtree(_executed, ignore_errors=True)
        _executed = None
