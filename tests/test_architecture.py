"""The package's shape (docs/design.md, "Dependency direction"): every import of a `ntk_vs_nn` module, at module
level or inside a function, points to the same layer or one below, no two modules import each other even
lazily, and nothing below the command line prints. The checks read the source (ast), so they see the lazy,
function-level imports that a module-level graph misses; each is shown to catch a planted violation."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bottom first; a module may import its own layer and the layers before it
LAYERS = (
    ("config", "rng", "paper", "logs"),
    ("data", "models", "store"),
    ("analysis", "metrics"),
    ("families",),
    ("engine",),
    ("kernels",),
    ("protocols",),
    ("report",),
    ("experiments",),
    ("cli", "__main__", ""),  # "": the package's lazy public API (ntk_vs_nn/__init__.py)
)
PRINTERS = {"ntk_vs_nn.cli", "ntk_vs_nn.__main__"}  # the only modules that print


def modules(pkg_dir: str) -> dict:
    """{dotted module name: path} of the package at ``pkg_dir``."""
    base = os.path.dirname(pkg_dir)
    out = {}
    for dirpath, _, files in os.walk(pkg_dir):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def import_graph(pkg_dir: str) -> dict:
    """{module: {imported module: line}} over every import statement in the module (ast.walk: module level
    and inside functions); ``from a import b`` names the module ``a.b`` where ``b`` is one, else ``a``."""
    mods = modules(pkg_dir)
    pkg = os.path.basename(pkg_dir)
    graph = {}
    for name, path in mods.items():
        deps = {}
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(open(path).read(), path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if not (t == pkg or t.startswith(pkg + ".")):
                    continue
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    deps.setdefault(t, node.lineno)
        graph[name] = deps
    return graph


def cycles(graph: dict) -> list:
    """Every import cycle found by a depth-first walk, as [m0, m1, ..., m0]."""
    state, found = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                found.append([*stack, m, d][[*stack, m].index(d) :])
            elif d not in state:
                visit(d, [*stack, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return found


def layer_of(module: str, layers=LAYERS) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(layers):
        if top in names:
            return i
    raise AssertionError(f"{module}: in no layer of tests/test_architecture.py's LAYERS (add it)")


def upward(graph: dict, layers=LAYERS) -> list:
    """Imports that point to a higher layer: (module, line, imported module)."""
    return [
        (m, line, d)
        for m, deps in graph.items()
        for d, line in deps.items()
        if layer_of(d, layers) > layer_of(m, layers)
    ]


def printers(pkg_dir: str) -> list:
    """(module, line) of every ``print(...)`` call."""
    out = []
    for name, path in modules(pkg_dir).items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                out.append((name, node.lineno))
    return out


PKG = os.path.join(ROOT, "ntk_vs_nn")


def test_no_import_cycle_even_through_function_level_imports():
    graph = import_graph(PKG)
    assert len(graph) > 60 and sum(map(len, graph.values())) > 150  # the walk sees the package
    assert cycles(graph) == []


def test_every_import_points_down_the_layers():
    assert upward(import_graph(PKG)) == []


def test_nothing_below_the_command_line_prints():
    assert [p for p in printers(PKG) if p[0] not in PRINTERS] == []


@pytest.fixture
def planted(tmp_path):
    """A package whose `low.a` imports `high.b` inside a function, and `high.b` imports `low.a` at the top."""
    pkg = tmp_path / "ntk_vs_nn"
    for d in ("low", "high"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from ntk_vs_nn.high import b\n    return b\n")
    (pkg / "high" / "b.py").write_text("from ntk_vs_nn.low import a\n\n\ndef g():\n    print(a)\n")
    return str(pkg)


def test_the_checks_catch_a_planted_function_level_circle_an_upward_import_and_a_print(planted):
    graph = import_graph(planted)
    assert graph["ntk_vs_nn.low.a"] == {"ntk_vs_nn.high.b": 2}
    assert cycles(graph) == [["ntk_vs_nn.high.b", "ntk_vs_nn.low.a", "ntk_vs_nn.high.b"]]
    layers = (("low",), ("high",), ("",))
    assert upward(graph, layers) == [("ntk_vs_nn.low.a", 2, "ntk_vs_nn.high.b")]
    assert printers(planted) == [("ntk_vs_nn.high.b", 5)]


def test_every_prng_stream_tag_is_distinct():
    """`rng.STREAMS` folds every stream from the run's root key: two names with one tag would draw the same
    numbers (as would two step tags)."""
    from ntk_vs_nn import rng

    assert len(set(rng.STREAMS.values())) == len(rng.STREAMS)
    assert len(set(rng.STEP_TAGS.values())) == len(rng.STEP_TAGS)


def test_the_tests_mirror_the_package():
    """Each folder of tests/ is named after the package folder whose modules its tests exercise (a test
    of ntk_vs_nn/engine/ lives in tests/engine/), so a reader finds a module's tests by its path."""
    tests = os.path.join(ROOT, "tests")
    folders = [d for d in os.listdir(tests) if os.path.isdir(os.path.join(tests, d)) and not d.startswith((".", "_"))]
    assert folders
    for d in folders:
        assert os.path.isdir(os.path.join(ROOT, "ntk_vs_nn", d)), f"tests/{d}/ mirrors no ntk_vs_nn/{d}/"
        assert any(f.startswith("test_") for f in os.listdir(os.path.join(tests, d))), f"tests/{d}/ has no tests"


def test_modules_shared_among_workers_build_no_module_fixture():
    """A test module with ``SPREAD_OVER_WORKERS = True`` has its tests run by every `make test` worker
    (conftest, ``--dist loadgroup``), so a module- or session-scoped fixture of its own would be built once
    per worker: such a module must define none. The slowest file must carry the flag (spelt as conftest
    reads it), or its cases would again sit on one worker at the end of the run."""
    import ast
    import glob

    flagged = []
    for path in glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True):
        tree = ast.parse(open(path).read())
        names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)}  # fmt: skip
        if "SPREAD_OVER_WORKERS" not in names:
            continue
        flagged.append(os.path.relpath(path, ROOT))
        for node in ast.walk(tree):
            for dec in getattr(node, "decorator_list", []):
                scope = [k.value.value for k in getattr(dec, "keywords", []) if k.arg == "scope"]
                assert not scope or scope[0] == "function", f"{flagged[-1]}: a {scope[0]}-scoped fixture"
    assert "tests/kernels/test_empirical_api_nt.py" in flagged  # the suite's slowest file: its cases must spread
