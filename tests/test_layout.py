"""The package's floor plan, read from the code's own imports (``ast``, nothing imported or run): the library never
imports the leaves ``demo/`` and ``standins/``, the wings' imports point one way (no two wings import each other,
even through a third), and an import inside a function says on its line, or the line above, why it is lazy."""
from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "addressvlm"
SCRIPT_FOLDERS = ("datasets_prep", "eval", "tools", "benchmarks")
LEAVES = ("demo", "standins")
MOST_ENTRIES = 12


def package_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, lazy)`` of every ``addressvlm`` import in ``path``; lazy: inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    in_function = {id(node) for function in functions for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] if node.module != "addressvlm" else [f"addressvlm.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [(module, node.lineno, id(node) in in_function) for module in modules
                  if module.split(".")[0] == "addressvlm"]
    return found


def wing_of(module: str) -> str | None:
    """The wing (top-level folder of the package) of a dotted module name, None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_files(package: Path = PACKAGE) -> dict[str, Path]:
    return {".".join(path.relative_to(package.parent).with_suffix("").parts): path
            for path in sorted(package.rglob("*.py"))}


def wing_graph(package: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """``wing -> {wing it imports: ["file:line", ...]}``."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in package_files(package).items():
        source = wing_of(module)
        for imported, line, _ in package_imports(path):
            target = wing_of(imported)
            if source and target and target != source:
                graph.setdefault(source, {}).setdefault(target, []).append(f"{path.relative_to(package.parent)}:{line}")
    return graph


def wing_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of wings importing each other (``[a, b, ..., a]``), or None."""
    state: dict[str, str] = {}

    def visit(wing: str, trail: list[str]) -> list[str] | None:
        state[wing] = "open"
        for target in sorted(graph.get(wing, {})):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state and (cycle := visit(target, trail + [target])):
                return cycle
        state[wing] = "done"
        return None

    for wing in sorted(graph):
        if wing not in state and (cycle := visit(wing, [wing])):
            return cycle
    return None


def unexplained_lazy_imports(package: Path = PACKAGE) -> list[str]:
    """``file:line`` of each in-function package import without a ``# lazy: why`` comment on its line or above it
    (above a run of imports, for all of them)."""
    problems = []
    for path in package_files(package).values():
        lines = path.read_text().splitlines()
        for _, line, lazy in package_imports(path):
            above = line - 1
            while above > 0 and lines[above - 1].lstrip().startswith(("from ", "import ")):
                above -= 1
            said = lines[line - 1] + " " + (lines[above - 1] if above > 0 else "")
            if lazy and "# lazy:" not in said.lower():
                problems.append(f"{path.relative_to(package.parent)}:{line}")
    return problems


def leaf_imports(package: Path = PACKAGE) -> list[str]:
    """``file:line imports module`` of each import of ``demo/`` or ``standins/`` from outside them."""
    return [f"{path.relative_to(package.parent)}:{line} imports {imported}"
            for module, path in package_files(package).items() if wing_of(module) not in LEAVES
            for imported, line, _ in package_imports(path) if wing_of(imported) in LEAVES]


def test_the_library_never_imports_the_leaves():
    wrong = leaf_imports()
    assert not wrong, "the library imports demo/ or standins/:\n" + "\n".join(wrong)


def test_wings_import_one_way():
    graph = wing_graph()
    cycle = wing_cycle(graph)
    assert cycle is None, "wings import each other: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"{a} -> {b}: {', '.join(graph[a][b][:3])}" for a, b in zip(cycle, cycle[1:]))


def test_lazy_package_imports_say_why():
    problems = unexplained_lazy_imports()
    assert not problems, ("package imports inside functions without a '# lazy: <why>' comment (move them to the "
                          "file's top):\n" + "\n".join(problems))


def test_the_package_has_a_few_doors():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= MOST_ENTRIES, entries
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"], "modules belong in a wing"


def test_no_two_classes_share_a_name():
    """A name means one thing in the package (two ``Street`` classes, one in lon/lat and one in metres, read alike)."""
    homes: dict[str, list[str]] = {}
    for module, path in package_files().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                homes.setdefault(node.name, []).append(module)
    assert not {name: where for name, where in homes.items() if len(where) > 1}


def test_the_checks_catch_a_forbidden_import(tmp_path):
    """The same checks on a copy of the package with one wrong import each: they fail."""
    copy = tmp_path / "addressvlm"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json", "static"))
    core = copy / "core" / "records.py"
    core.write_text(core.read_text() + "\nfrom addressvlm.answering.scoring import score\n\n\ndef _late():\n"
                    "    from addressvlm.demo.pipeline import run_demo\n")
    last_line = len(core.read_text().splitlines())
    assert wing_cycle(wing_graph(copy)) == ["answering", "core", "answering"]
    assert unexplained_lazy_imports(copy) == [f"addressvlm/core/records.py:{last_line}"]
    assert leaf_imports(copy) == [f"addressvlm/core/records.py:{last_line} imports addressvlm.demo.pipeline"]


def readme_layout() -> dict[str, str]:
    """The README's layout table: ``path -> what``."""
    section = (REPO / "README.md").read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return {match.group(1): match.group(2) for match in re.finditer(r"^\| `([^`]+)`[^|]* \| (.+) \|$", section, re.M)}


def listed_names(what: str) -> set[str]:
    """The names a script folder's row lists: the first word of each comma- or semicolon-separated item."""
    return {item.split()[0] for item in re.split(r"[,;]", re.sub(r"\([^)]*\)", "", what)) if item.strip()}


def test_the_readme_layout_lists_every_entry_point():
    layout = readme_layout()
    for folder in SCRIPT_FOLDERS:
        assert listed_names(layout[f"{folder}/"]) == {p.stem for p in (REPO / folder).glob("*.py")}, folder
    assert set(re.findall(r"`([\w.]+\.md)`", layout["docs/"])) == {p.name for p in (REPO / "docs").glob("*.md")}
    for wing in sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name not in ("__pycache__", *LEAVES)):
        modules = {p.stem for p in (PACKAGE / wing).glob("*.py")} - {"__init__"}
        words = set(re.findall(r"\w+", layout[f"addressvlm/{wing}/"]))
        assert modules <= words, (wing, modules - words)
    recipes = layout["recipes/"]
    assert all(f"`{p.name}/`" in recipes for p in (REPO / "recipes").iterdir() if p.is_dir()), recipes
    cities = {p.stem.split("_", 1)[1] for p in (REPO / "recipes").glob("stage1_*.py")}
    assert all(city in recipes for city in cities), cities
