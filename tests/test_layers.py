"""Layering: where the sampler's parts live, and which way imports go (docs/architecture.md)."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_sampling_package_exposes_the_public_names_once():
    import latent_balance
    import latent_balance.sampling as sampling

    for name in sampling.__all__:
        obj = getattr(sampling, name)
        if name != "SHARPNESS_GRID":
            # defined in one module of the package, re-exported (the same object) by latent_balance
            assert obj.__module__.startswith("latent_balance.sampling."), (name, obj.__module__)
            assert getattr(latent_balance, name) is obj
    # the mixed-in parts are private and resolve to one class
    assert sampling.BalancedSampler.plan.__module__ == "latent_balance.sampling.planning"
    assert sampling.BalancedSampler._verify_block.__module__ == "latent_balance.sampling.verify"
    assert sampling.BalancedSampler.schedule.__module__ == "latent_balance.sampling.allocation"


def test_old_sampler_module_is_a_deprecated_alias():
    import latent_balance.sampling as sampling

    sys.modules.pop("latent_balance.sampler", None)
    with pytest.warns(DeprecationWarning, match="latent_balance.sampler is deprecated"):
        old = importlib.import_module("latent_balance.sampler")
    for name in sampling.__all__:
        assert getattr(old, name) is getattr(sampling, name)
    # nothing in the package itself uses the alias: importing all of it does not load it
    code = ("import sys, latent_balance, latent_balance.cli, latent_balance.demo, latent_balance.sources; "
            "assert 'latent_balance.sampler' not in sys.modules, 'the alias was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=_env())
    assert done.returncode == 0, done.stderr


def _env():
    """This process's environment with its sys.path, so a subprocess imports the same code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


# ------------------------------------------------------------------------------------------------
# Import direction: latent_balance uses stylegan_ops and attributes, never the reverse; all three use
# _lb_common, which uses none of them; inside latent_balance no module imports one that imports it back.

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("latent_balance", "stylegan_ops", "attributes")
# A regeneration script run by hand (it makes faces with latent_balance's DCGAN); it is not a module of
# the attributes package (fixtures/ has no __init__.py) and nothing imports its main().
DEV_SCRIPTS = {"attributes.fixtures.make_fixture"}


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under a package folder."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules `name` imports anywhere in its body (function-local imports included; ``if TYPE_CHECKING:``
    blocks left out, they never run). ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a
    module, else ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node):
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def _graph(package: str) -> dict[str, set[str]]:
    mods = _modules(package)
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _ours(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in PACKAGES + ("_lb_common",) else None


@pytest.mark.parametrize("package", ["stylegan_ops", "attributes"])
def test_lower_packages_never_import_latent_balance(package):
    bad = {m: sorted(i for i in imps if _ours(i) == "latent_balance")
           for m, imps in _graph(package).items() if m not in DEV_SCRIPTS}
    assert not {m: i for m, i in bad.items() if i}, bad
    # and the two lower packages are independent of each other
    other = ({"stylegan_ops", "attributes"} - {package}).pop()
    cross = {m: sorted(i for i in imps if _ours(i) == other) for m, imps in _graph(package).items()}
    assert not {m: i for m, i in cross.items() if i}


def test_the_bottom_module_imports_nothing_of_ours():
    imps = _imports("_lb_common", ROOT / "_lb_common.py", set())
    assert not {i for i in imps if _ours(i)}, imps


def test_the_static_check_sees_imports_at_any_depth(tmp_path):
    # the check must be able to fail: a function-local relative import and a module-level one are found,
    # a TYPE_CHECKING one is not
    f = tmp_path / "mod.py"
    f.write_text("from typing import TYPE_CHECKING\nfrom .a import x\nif TYPE_CHECKING:\n    from .b import y\n"
                 "def g():\n    from ..c import z\n    import latent_balance._utils\n")
    got = _imports("pkg.sub.mod", f, {"pkg.sub.a"})
    assert got == {"typing", "pkg.sub.a", "pkg.c", "latent_balance._utils"}, got


def test_lower_packages_import_with_latent_balance_unimportable():
    modules = [m for pkg in ("stylegan_ops", "attributes") for m in _modules(pkg)]
    code = ("import importlib, sys\n"
            "sys.modules['latent_balance'] = None  # any import of it (or of a submodule) now fails\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "import attributes\n"
            "for name in attributes.__all__:\n"
            "    getattr(attributes, name)  # the lazily exported labeler classes too\n"
            "print(sorted(m for m in sys.modules if m.startswith('latent_balance')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['latent_balance']", done.stdout


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph or w == v:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_one_that_imports_it_back(package):
    assert _cycles(_graph(package)) == []


# ------------------------------------------------------------------------------------------------
# docs/architecture.md's table "Who may import what" is the code's import graph, row by row.

TOP = ("_lb_common", "stylegan_ops", "attributes")


def _doc_rules() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Who may import what", 1)[1].split("\n## ", 1)[0]
    rules = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        _, first, second, _ = line.split("|")
        names = [_doc_name(n) for n in second.split("`")[1::2]]
        rules[_doc_name(first.strip().strip("`"))] = set(names)
    return rules


def _doc_name(name: str) -> str:
    if name in TOP:
        return name
    return "latent_balance" if name == "__init__" else f"latent_balance.{name}"


def _unit(module: str) -> str:
    """The row a module belongs to: a lower package or the bottom module as a whole, a module (or the
    subpackage) of latent_balance."""
    parts = module.split(".")
    if parts[0] != "latent_balance":
        return parts[0]
    return "latent_balance" if len(parts) == 1 else f"latent_balance.{parts[1]}"


def test_architecture_doc_table_matches_the_imports():
    rules = _doc_rules()
    actual: dict[str, set[str]] = {"_lb_common": set()}
    graphs = {**{m: i for p in PACKAGES for m, i in _graph(p).items()},
              "_lb_common": _imports("_lb_common", ROOT / "_lb_common.py", set())}
    for m, imps in graphs.items():
        if m in DEV_SCRIPTS:
            continue
        unit = _unit(m)
        actual.setdefault(unit, set()).update(_unit(i) for i in imps if _ours(i) and _unit(i) != unit)
    assert sorted(rules) == sorted(actual), "rows of docs/architecture.md vs modules of the code"
    wrong = {u: {"doc": sorted(rules[u]), "code": sorted(actual[u])} for u in actual if rules[u] != actual[u]}
    assert not wrong, wrong
