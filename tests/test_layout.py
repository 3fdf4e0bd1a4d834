"""The package's layering, read from its source (nothing is imported).

- No import cycle between its modules, counting imports inside functions: each module
  can be understood, and tested, above the ones it uses.
- No module imports another one's private names: what modules share is public.
- Another library's private names and internal modules are used in ``compat/`` only,
  where each sits beside the check of the versions it works with.
- No function is longer than 60 lines: each reads on one screen.
"""

import ast
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = Path(__file__).resolve().parent.parent / "mergekit_expo"
# Other libraries' modules (or module.Name) that are internal although their names are not.
INTERNAL = ("transformers.core_model_loading", "transformers.conversion_mapping",
            "transformers.modeling_utils.LoadStateDictConfig")
ATTRIBUTE_CALLS = ("getattr", "hasattr", "setattr", "delattr")
DOCUMENTED = ("os._exit",)  # public, documented names that start with "_"


def modules(package: Path) -> Dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` (a package is its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(node, name: str, path: Path) -> List[str]:
    """The dotted names an import statement in module ``name`` (file ``path``) imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's own package, up level - 1
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(package: Path) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports, at any depth of its code."""
    known = modules(package)
    graph = {}
    for name, path in known.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, name, path):
                    while target and target not in known:  # from pkg import NAME: the package
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        graph[name].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle (its modules, the first repeated at the end), or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), None)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _third_party(dotted: str, own: str) -> bool:
    top = dotted.split(".")[0]
    return bool(top) and top != own and top not in sys.stdlib_module_names


def _chain(node) -> List[str]:
    """``a.b.c`` as ["a", "b", "c"]; [] when it does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return [node.id, *parts] if isinstance(node, ast.Name) else []


def _attribute_call(node) -> bool:
    """``getattr(obj, "name", ...)`` and the like, on anything but ``self``/``cls``."""
    return (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ATTRIBUTE_CALLS
            and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
            and getattr(node.args[0], "id", None) not in ("self", "cls"))


def private_uses(path: Path, own: str) -> List[str]:
    """Where the module at ``path`` reaches into another library: "line: what"."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {}  # a name bound by importing another library -> what it names
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            for alias, dotted in zip(node.names, imported(node, "", path)):
                if not _third_party(dotted, own):
                    continue
                name = alias.asname or alias.name
                if isinstance(node, ast.Import) and not alias.asname:  # import a.b binds a
                    name = dotted = dotted.split(".")[0]
                bound[name] = dotted
    found = set()
    for node in ast.walk(tree):
        uses, chain = [], _chain(node) if isinstance(node, ast.Attribute) else []
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            uses = [d for d in imported(node, "", path) if _third_party(d, own)]
        elif chain and chain[0] in bound:  # an attribute of another library's module
            uses = [".".join([bound[chain[0]], *chain[1:]])]
            if isinstance(node.ctx, ast.Store):  # a monkeypatch
                found.add(f"{node.lineno}: sets {uses[0]}")
        elif _attribute_call(node):  # getattr(obj, "_name"): someone's private attribute
            uses = [f"{ast.unparse(node.args[0])}.{node.args[1].value}"]
        for use in uses:
            if any(_private(part) for part in use.split(".")) or use.startswith(INTERNAL):
                found.add(f"{node.lineno}: {use}")
    return sorted(found)


def own_private_names(package: Path) -> set:
    """Private names the package defines itself: functions, classes, attributes it assigns."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if _private(name)}


def foreign_private_attributes(path: Path, own: set) -> List[str]:
    """``obj._name`` on another object, where ``_name`` is nothing the package defines:
    another library's private attribute (optuna's ``trial._trial_id``, say)."""
    return sorted(f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own
                  and getattr(node.value, "id", None) not in ("self", "cls") and ast.unparse(node) not in DOCUMENTED)


def test_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    known = modules(PACKAGE)
    private = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {target}"
               for name, path in known.items() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) for target in imported(node, name, path)
               if target.startswith(f"{PACKAGE.name}.") and target not in known  # a name, not a module
               and _private(target.rpartition(".")[2])]
    assert not private, "\n".join(private)


def test_other_libraries_internals_only_in_compat():
    compat = f"{PACKAGE.name}.compat"
    own = own_private_names(PACKAGE)
    outside = [(path, use) for name, path in modules(PACKAGE).items()
               if name != compat and not name.startswith(f"{compat}.")
               for use in [*private_uses(path, PACKAGE.name), *foreign_private_attributes(path, own)]]
    assert not outside, "\n".join(f"{path.relative_to(PACKAGE.parent)}:{use}" for path, use in outside)


def long_functions(package: Path, limit: int = 60) -> List[str]:
    """``file:name (lines)`` of every function or method over ``limit`` lines, decorators excluded."""
    return [f"{path.relative_to(package.parent)}:{node.name} ({node.end_lineno - node.lineno + 1})"
            for path in sorted(package.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_over_60_lines():
    assert not long_functions(PACKAGE), long_functions(PACKAGE)


def test_the_checks_catch_what_they_look_for(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (package / "c.py").write_text(
        "import lm_eval.evaluator\nimport torch as t\nfrom mergekit.merge import _model_out_config\n"
        "from transformers.conversion_mapping import get_model_conversion_mapping\n"
        "def f(task):\n    lm_eval.evaluator.get_git_commit_hash = None\n    t._C.x\n"
        "    getattr(task, '_filters', [])\n    getattr(self, '_mine')\n    t.__version__\n"
    )
    found = {use.split(": ", 1)[1] for use in private_uses(package / "c.py", "pkg")}
    assert found == {"mergekit.merge._model_out_config", "sets lm_eval.evaluator.get_git_commit_hash",
                     "transformers.conversion_mapping.get_model_conversion_mapping", "torch._C",
                     "torch._C.x", "task._filters"}, found
    (package / "d.py").write_text("def f(trial, engine):\n    trial._trial_id\n    engine._mine\n"
                                  "class E:\n    def _mine(self):\n        self._x = 1\n")
    assert foreign_private_attributes(package / "d.py", own_private_names(package)) == ["2: trial._trial_id"]
    (package / "e.py").write_text("def long():\n" + "    x = 1\n" * 60)
    assert long_functions(package) == ["pkg/e.py:long (61)"]


# -- the search: names written once, a loop that names no strategy ------------------------------
SEARCH = PACKAGE / "search"
LOOP = SEARCH / "study.py"  # the study's loop: leases units, stores, resumes; asks a strategy
# Other libraries' internals that carry no leading underscore (vLLM's workers and engine,
# lm-eval's task index, the registry dict of mergekit 0.1.4's family): compat/ only.
FOREIGN_ATTRIBUTES = ("model_runner", "reload_weights", "llm_engine", "engine_core", "task_index",
                      "REGISTERED_MERGE_METHODS")


def string_literals(path: Path) -> List[str]:
    """Every string constant of a module but its docstrings (prose, like comments)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def modules_naming(package: Path, name: str, option: str) -> List[str]:
    """The modules with a literal that is ``name``, or names it as ``--option name`` or `` `name` ``."""
    return sorted(str(path.relative_to(package.parent)) for path in package.rglob("*.py")
                  if any(text == name or f"--{option} {name}" in text or f"`{name}`" in text
                         for text in string_literals(path)))


def test_each_scorer_engine_and_space_name_is_written_in_its_module_and_the_registry_only():
    from mergekit_expo.search.registry import ENGINES, SCORERS, SPACES

    spread = {}
    for registry in (SCORERS, ENGINES, SPACES):
        for entry in registry.entries:
            found = modules_naming(PACKAGE, entry.name, registry.noun)
            own = entry.target.partition(":")[0].replace(".", "/") + ".py"
            if [path for path in found if path not in ("mergekit_expo/search/registry.py", own)]:
                spread[entry.name] = found
    assert not spread, spread


def test_the_study_loop_names_no_strategy():
    from mergekit_expo.search.registry import STRATEGIES

    names = set(STRATEGIES.names())
    tree = ast.parse(LOOP.read_text())
    words = set(string_literals(LOOP)) | {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} \
        | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    targets = {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for target in imported(node, "mergekit_expo.search.study", LOOP)}
    assert not names & words, names & words
    assert not [t for t in targets if ".strategies." in t
                and not t.startswith("mergekit_expo.search.strategies.base")], targets


def test_other_libraries_internals_without_underscore_stay_in_compat_too():
    outside = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.attr}"
               for path in PACKAGE.rglob("*.py") if "compat" not in path.parts
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Attribute) and node.attr in FOREIGN_ATTRIBUTES]
    assert not outside, outside


def test_the_search_checks_catch_what_they_look_for(tmp_path):
    (tmp_path / "a.py").write_text('"""Names hf in prose."""\nENGINE = "hf"\nUSE = "use --engine hf"\n'
                                   'def f(llm):\n    """`hf`"""\n    return llm.llm_engine\n')
    (tmp_path / "b.py").write_text('"""hf, `hf`, --engine hf: prose only."""\nX = "hfx"\n')
    assert modules_naming(tmp_path, "hf", "engine") == [f"{tmp_path.name}/a.py"]
    assert string_literals(tmp_path / "a.py") == ["hf", "use --engine hf"]
