"""The house's layering as a contract (.importlinter, docs/ARCHITECTURE.md): import-linter checks
that the packages import downward only and that nothing imports an entry point; the top-level
entry points, which it cannot analyse, are checked here by reading their imports."""
import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("run", "predict", "export", "serve", "compare")
PACKAGES = ("models", "utils", "dataio", "synthetic", "training", "inference")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_the_packages_import_downward_only():
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_entry_point_imports_another():
    scripts = [REPO / f"{name}.py" for name in ENTRY_POINTS] + sorted((REPO / "scripts").glob("*.py"))
    for path in scripts:
        bad = {name for name in imported_modules(path)
               if name.split(".")[0] in ENTRY_POINTS or name.split(".")[0] in ("data_prep", "bench")}
        assert not bad, f"{path.name} imports the entry point(s) {sorted(bad)}; move what they share into a package"


def test_only_scripts_edit_sys_path():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            assert "sys.path" not in path.read_text(), f"{path.relative_to(REPO)} edits sys.path"


def commands(text: str) -> list[str]:
    """The scripts and modules that `python X.py`, `"$PY" X.py` and `python -m M` lines run."""
    found = re.findall(r'(?:python3?|"\$PY")\s+((?:[\w./-]+/)?[\w-]+\.py)\b', text)
    found += [name.replace(".", "/") for name in re.findall(r'(?:python3?|"\$PY")\s+-m\s+([\w.]+)', text)
              if name.split(".")[0] in PACKAGES + ENTRY_POINTS]
    return found


def test_every_command_in_the_readme_docs_and_scripts_exists():
    """A module that moves takes its commands with it: README, docs and shell scripts run only
    files and modules that are there."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "scripts").glob("*.sh")),
             REPO / "best_run.sh", REPO / "test.sh"]
    missing = [f"{path.name}: {name}" for path in texts for name in commands(path.read_text())
               if not ((REPO / name).is_file() or (REPO / f"{name}.py").is_file()
                       or (REPO / name / "__main__.py").is_file())]
    assert not missing, f"commands naming files that do not exist: {missing}"
