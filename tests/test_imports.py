"""The house as the code draws it: who imports whom among the project's modules (imports inside
functions count), with no circle, scripts on top of the library, and docs/code.md's picture generated
from the same graph, so the picture cannot go stale."""
import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("main", "train", "generate", "evaluate", "bench", "download", "convert")
PICTURE = re.compile(r"<!-- import graph: made by tests/test_imports.py -->\n```\n(.*?)```", re.S)


def project_modules():
    names = {f[:-3] for f in os.listdir(REPO) if f.endswith(".py")}
    if os.path.isdir(os.path.join(REPO, "benchmark")):
        names |= {f"benchmark.{f[:-3]}" for f in os.listdir(os.path.join(REPO, "benchmark")) if f.endswith(".py")}
    return names


def imports_of(module, modules):
    """The project modules `module` imports, anywhere in its file."""
    path = os.path.join(REPO, *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return sorted((found & modules) - {module})


def graph():
    modules = project_modules()
    return {module: imports_of(module, modules) for module in sorted(modules)}


def layers(edges):
    """Each module's height: 0 for one that imports no project module, else one more than the highest
    it imports (a circle would never settle: KeyError)."""
    height = {}
    while len(height) < len(edges):
        settled = {m: 1 + max((height[d] for d in deps), default=-1) for m, deps in edges.items()
                   if m not in height and all(d in height for d in deps)}
        if not settled:
            raise KeyError(f"import circle among {sorted(set(edges) - set(height))}")
        height.update(settled)
    return height


def picture(edges):
    """Modules by height, top first, each with what it imports: the text docs/code.md shows."""
    height = layers(edges)
    lines = []
    for level in range(max(height.values()), -1, -1):
        for module in sorted(m for m in edges if height[m] == level):
            arrow = " -> " + ", ".join(edges[module]) if edges[module] else ""
            lines.append(f"{level:>2}  {module}{arrow}")
    return "\n".join(lines) + "\n"


def test_no_import_circle_and_scripts_never_import_scripts():
    edges = graph()
    layers(edges)  # raises on a circle
    for script in SCRIPTS:
        others = set(edges.get(script, ())) & set(SCRIPTS)
        assert script == "main" or not others, f"{script}.py imports the script(s) {sorted(others)}"
    for module, deps in edges.items():
        if module not in SCRIPTS and not module.startswith("benchmark."):
            assert not set(deps) & set(SCRIPTS), f"the library module {module} imports a script: {deps}"


def test_docs_code_md_shows_the_import_graph_of_the_code():
    with open(os.path.join(REPO, "docs", "code.md"), encoding="utf-8") as f:
        shown = PICTURE.search(f.read())
    expected = picture(graph())
    assert shown, "docs/code.md lacks the import graph block"
    assert shown.group(1) == expected, "docs/code.md's import graph is stale; the code's is:\n" + expected


def test_the_module_tables_of_readme_and_docs_code_md_name_every_top_level_file():
    """README's and docs/code.md's tables of library modules and scripts (rows "| `name.py` | ...") list
    the top-level files there are, no more and no fewer."""
    files = {f"{module}.py" for module in project_modules() if "." not in module}
    for page in ("README.md", os.path.join("docs", "code.md")):
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            rows = set(re.findall(r"^\| `(\w+\.py)` \|", f.read(), re.M))
        assert rows == files, f"{page}: missing {sorted(files - rows)}, not there {sorted(rows - files)}"


def test_a_keras_backend_the_project_cannot_train_on_is_one_line_from_every_script():
    """Keras raises while it is imported (before any script's error handling) for a backend it does not
    know or that is not installed; NumPy's it imports, but it cannot train. Each is one line, exit 1."""
    import subprocess
    import sys

    every_script = ("train.py", "generate.py", "evaluate.py", "bench.py", "main.py")
    for backend, problem, scripts in (("bogus", "Unable to import backend : bogus", every_script),
                                      ("numpy", "'numpy' cannot train", ("train.py",))):  # seconds to import
        for script in scripts:
            ended = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                                   env=dict(os.environ, KERAS_BACKEND=backend))
            assert (ended.returncode, ended.stdout) == (1, ""), script
            assert ended.stderr == (f"{script}: error: KERAS_BACKEND (or ~/.keras/keras.json): {problem}; "
                                    "expected one of tensorflow, jax, torch, installed\n"), script


def test_ctrl_c_while_keras_and_tensorflow_are_imported_is_one_line():
    """The seconds of the import come before a script's run_cli: quiet.py turns Ctrl-C there into the
    same line run_cli gives later (exit 1), not a traceback through the import machinery."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "generate.py", "--help"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,  # SIGINT as a terminal's (xdist's workers ignore it)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.0)  # past Python's start, inside TensorFlow's import (seconds on any CPU here)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (1, "", "generate.py: interrupted\n")
