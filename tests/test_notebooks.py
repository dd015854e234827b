"""The teaching notebooks: committed without outputs, built on the library, and run top to bottom offline."""

import json
import re
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["01_forward_process", "02_one_ddim_step", "03_unet_tour", "04_sampling", "05_interpolation_inversion",
            "06_real_checkpoint", "07_quality_against_steps", "08_exercises"]
PATHS = [NOTEBOOKS / f"{name}.ipynb" for name in EXPECTED]
CELL_TIMEOUT = 180  # seconds; each notebook takes well under a minute in total on a laptop CPU


def read(path):
    """The notebook as plain JSON (the static checks need no Jupyter packages)."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        cell["source"] = "".join(cell["source"])
    return notebook


def code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def markdown(notebook):
    return "\n".join(cell["source"] for cell in notebook["cells"] if cell["cell_type"] == "markdown")


def test_the_notebooks_are_there_in_order():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=EXPECTED)
def test_notebook_is_committed_without_outputs(path):
    notebook = read(path)
    assert notebook["nbformat"] == 4
    for cell in code_cells(notebook):
        assert cell["outputs"] == [] and cell["execution_count"] is None, \
            f"{path.name}: strip the outputs of {cell['source'][:60]!r}"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", PATHS, ids=EXPECTED)
def test_notebook_imports_the_library_and_shows_its_source(path):
    notebook = read(path)
    assert code_cells(notebook)[0]["source"].startswith("import tinyddim as td\n")
    code = "\n".join(cell["source"] for cell in code_cells(notebook))
    assert "inspect.getsource(" in code
    for name in ("ddim_step", "ddim_sigma", "ddpm_step", "make_betas", "unet_forward", "slerp", "ddim_invert",
                 "load_mnist", "load_digits", "resize_digits", "to_images", "as_x0"):
        assert f"def {name}(" not in code, f"{path.name} pastes a copy of {name}; show it with inspect.getsource"
    for pasted in ("mnist_test_10k.npz", "mnist_train_10k.npz", "Image.BILINEAR"):  # the data: td.mnist.load_mnist
        assert pasted not in code, f"{path.name} loads MNIST itself ({pasted}); use td.mnist.load_mnist"
    if path.stem != "06_real_checkpoint":  # the math notebooks carry their equations in LaTeX
        assert "$$" in markdown(notebook)


def _imports(source, at_import_time=False):
    """Top-level module names a piece of code imports, except inside `try: … except ImportError` (optional ones);
    at_import_time=True also leaves out imports inside functions and classes (run only when called)."""
    import ast

    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    optional = set()
    for node in ast.walk(tree):
        if at_import_time and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            optional.update(id(n) for child in node.body for n in ast.walk(child))
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers):
            optional.update(id(n) for child in node.body for n in ast.walk(child))
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_notebooks_import_only_what_the_notebooks_extra_installs():
    """`pip install -e ".[notebooks]"` is all the README asks for: the core dependencies, Jupyter, the standard
    library and tinyddim. torch and diffusers (the `test` extra) may only be imported where an ImportError is caught."""
    pyproject = (NOTEBOOKS.parent / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib before Python 3.11
    lists = [re.search(rf"^{key} = \[(.*?)\]", pyproject, re.M | re.S).group(1) for key in ("dependencies", "notebooks")]
    distributions = re.findall(r'"([^"]+)"', " ".join(lists))
    modules = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("-", "_") for d in distributions}
    modules |= {"PIL" for name in list(modules) if name == "pillow"} | {"IPython", "tinyddim"}
    for path in PATHS:
        code = "\n".join(cell["source"] for cell in code_cells(read(path)))
        extra = _imports(code) - modules - set(sys.stdlib_module_names)
        assert not extra, f"{path.name} imports {sorted(extra)}, which pip install -e '.[notebooks]' does not install"
    for path in (NOTEBOOKS.parent / "tinyddim").glob("*.py"):  # what `import tinyddim` pulls in at import time
        extra = _imports(path.read_text(encoding="utf-8"), at_import_time=True) - modules - set(sys.stdlib_module_names)
        assert not extra, f"tinyddim/{path.name} imports {sorted(extra)} at import time"


def test_the_import_scan_sees_imports_and_spares_optional_ones():
    assert _imports("import torch\nfrom diffusers.models import UNet2DModel\n%matplotlib inline") == {"torch", "diffusers"}
    assert _imports("try:\n    import torch\nexcept ImportError:\n    torch = None\nimport numpy as np") == {"numpy"}
    assert _imports("if True:\n    import torch") == {"torch"}  # a branch is no excuse
    assert _imports("def f():\n    import cupy", at_import_time=True) == set() and _imports("def f():\n    import cupy") == {"cupy"}


def test_equation_numbers_match_the_docstrings():
    """A notebook that names DDIM Eq. 9/12/13/16 or DDPM Algorithm 2 uses the numbers the code does."""
    import tinyddim

    text = {p.stem: markdown(read(p)) for p in PATHS}
    assert "DDIM Eq. 9" in text["02_one_ddim_step"] and "Eq. 9" in tinyddim.ddim.ddim_step.__doc__ + \
        tinyddim.ddim.__doc__
    assert "DDIM Eq. 12" in text["02_one_ddim_step"] and "(DDIM Eq. 12)" in tinyddim.ddim.ddim_step.__doc__
    assert "DDIM Eq. 16" in text["02_one_ddim_step"] and "(DDIM Eq. 16)" in tinyddim.ddim.ddim_sigma.__doc__
    assert "DDIM Eq. 14" in text["04_sampling"] and "Eq. 14" in tinyddim.inversion.__doc__
    assert "(DDIM Eq. 13)" in tinyddim.ode.__doc__ and "(DDIM Eq. 14)" in tinyddim.ode.__doc__
    for name, markdown_text in text.items():  # Eq. 13 is the rewritten update, never the ODE itself
        assert not re.search(r"ODE,?\s*\(?(of\s+)?(DDIM\s+)?Eq\.\s*\(?13", markdown_text), f"{name}: the ODE is Eq. 14"
        assert not re.search(r"d\\bar x\(t\)[^$]*Eq\. 13", markdown_text), f"{name}: the ODE is Eq. 14"
    assert "DDPM Algorithm 2" in text["04_sampling"] and "Alg. 2" in tinyddim.ddpm.ddpm_step.__doc__
    assert "DDPM Eq. 4" in text["01_forward_process"] and "(DDPM Eq. 4)" in tinyddim.DDIMScheduler.add_noise.__doc__


@pytest.mark.parametrize("path", PATHS, ids=EXPECTED)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    """Execute with nbclient in a python3 kernel of this interpreter (ipykernel installed beside it)."""
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]' to run the notebooks")
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    check = nbformat.v4.new_code_cell("import sys, tinyddim\nprint(sys.executable)\nprint(tinyddim.__file__)")
    notebook.cells.append(check)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # the kernel inherits it
    # jupyter_client starts the "python3" kernel with this interpreter (it maps argv[0] "python" to sys.executable);
    # the check cell appended above proves it, and that the kernel imports this checkout's tinyddim
    nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    printed = "".join(output.get("text", "") for output in check.outputs if output.output_type == "stream")
    executable, package = printed.split()  # the two lines may arrive as one output or two
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    import tinyddim

    assert Path(package).resolve() == Path(tinyddim.__file__).resolve()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert pictures, f"{path.name} shows no picture"


def _execute(notebook):
    import nbclient

    nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def _answer_cells(notebook):
    cells = [cell for cell in notebook.cells if "answer" in cell.metadata.get("tags", [])]
    names = [re.match(r"(?:def )?([A-Za-z_]\w*)", cell.source).group(1) for cell in cells]
    return cells, names


def test_the_exercise_solutions_pass_the_notebooks_checks(monkeypatch):
    """Run 08_exercises with each answer cell replaced by the answer from notebooks/solutions.py."""
    pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]' to run the notebooks")
    import nbformat

    notebook = nbformat.read(NOTEBOOKS / "08_exercises.ipynb", as_version=4)
    cells, names = _answer_cells(notebook)
    assert names == ["algorithm2_mean", "sigma_squared_eta_one", "quadratic_timesteps", "invert_by_hand",
                     "LEADING_S1_EXPLANATION"]
    for cell, name in zip(cells, names):
        cell.source = f"from solutions import {name}"
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    outputs = _execute(notebook)
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "not answered yet" not in text
    for passed in ("Exercise 1: Algorithm 2's mean equals", "Exercise 2: σ_t(η = 1)² = β̃_t", "quadratic, S = 10:",
                   "Exercise 4: your codes equal pipe.invert's", "Your explanation:"):
        assert passed in text


def test_a_wrong_exercise_answer_fails_its_check(monkeypatch):
    """The checks are not vacuous: rounding instead of flooring the quadratic timesteps is caught."""
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]' to run the notebooks")
    import nbformat

    notebook = nbformat.read(NOTEBOOKS / "08_exercises.ipynb", as_version=4)
    cells, names = _answer_cells(notebook)
    cells[names.index("quadratic_timesteps")].source = (
        "def quadratic_timesteps(T, S):\n"
        "    return np.unique(np.round(np.linspace(0, np.sqrt(0.8 * T), S) ** 2).astype(int))[::-1]")
    notebook.cells = notebook.cells[: notebook.cells.index(cells[names.index("quadratic_timesteps")]) + 2]
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="AssertionError"):
        _execute(notebook)


def test_the_solutions_paste_no_library_function():
    code = (NOTEBOOKS / "solutions.py").read_text(encoding="utf-8")
    for name in ("ddim_step", "ddim_sigma", "ddpm_step", "ddim_invert"):
        assert f"def {name}(" not in code
