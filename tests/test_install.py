"""The package as a user installs it: `pip install .` (here into a folder of its own), every tool
run from another folder, and every command the README names answering --help."""
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A non-editable install of the checkout (pip builds the wheel) into its own folder; built
    from a copy of the sources, so that the build leaves nothing in the checkout."""
    import shutil

    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "focal_rpn"), src / "focal_rpn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return str(target)


def _run(args, cwd, site, timeout=300):
    env = {**os.environ, "PYTHONPATH": site}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _readme_tools():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return sorted(set(re.findall(r"python -m (focal_rpn\.tools\.\w+)", text)))


def test_readme_names_the_tools():
    assert "focal_rpn.tools.ablate" in _readme_tools() and len(_readme_tools()) >= 7


def test_every_readme_tool_answers_help_from_the_installed_package(installed, tmp_path):
    """Each tool's command line, as `python -m TOOL --help` runs it, in one interpreter (imports once)."""
    code = """
import contextlib, io, runpy, sys
for module in sys.argv[1:]:
    sys.argv = [module, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            raise AssertionError(module + ": --help did not exit")
        except SystemExit as e:
            assert e.code in (0, None), (module, e.code)
    assert "usage" in out.getvalue().lower(), (module, out.getvalue())
    print("ok", module)
"""
    p = _run(["-c", code, *_readme_tools()], str(tmp_path), installed)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("ok ") == len(_readme_tools())


def test_a_study_runs_from_another_folder(installed, tmp_path):
    """The installed package alone (configs shipped inside it) trains a suite's run and reports it
    into ./results of the folder it runs in."""
    code = ("import focal_rpn, sys; assert focal_rpn.__file__.startswith(sys.argv[1]), focal_rpn.__file__; "
            "from focal_rpn.tools import ablate; ablate.main(sys.argv[2:])")
    p = _run(["-c", code, installed, "--suite", "retinanet", "--dataset", "synthetic", "--variants", "gamma_2",
              "--out", "runs", "--results", "results", "--opts", "SOLVER.MAX_ITER", "2"], str(tmp_path), installed)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert (tmp_path / "results" / "synthetic" / "retinanet" / "gamma_2" / "seed0.json").is_file()
    assert (tmp_path / "results" / "synthetic" / "retinanet" / "results.md").is_file()


def _package_imports():
    """{module: the focal_rpn modules it imports}, read from the sources (ast): ``from .x import y``
    counts as importing ``x.y`` when that is a module, else ``x``."""
    import ast
    from importlib.util import resolve_name

    pkg = os.path.join(ROOT, "focal_rpn")
    paths = {}
    for folder, _, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                paths[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    graph = {}
    for module, path in paths.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        found = set()
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = resolve_name("." * node.level + (node.module or ""), package)
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names}
        graph[module] = {m for m in found if m in paths and m != module}
    return graph


def test_no_import_cycle_and_the_library_never_imports_the_tools():
    graph = _package_imports()
    assert "focal_rpn.tools.ablate" in graph and "focal_rpn.study.runner" in graph["focal_rpn.tools.ablate"]
    upward = [(a, b) for a, deps in graph.items() for b in deps
              if b.startswith("focal_rpn.tools") and not a.startswith("focal_rpn.tools")]
    assert not upward, f"the library imports the tools: {upward}"
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join(path[path.index(dep):] + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
