"""Where a written file came from: the git commit of this checkout and the versions of Python
and the packages, recorded in a run's config.json and an export's manifest."""
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "pandas", "soundfile", "soxr", "av")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def package_versions(packages=PACKAGES) -> dict:
    """Python's version and each package's (None where it is not installed)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
