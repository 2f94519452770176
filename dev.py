#!/usr/bin/env python3
"""The README's two commands, with nothing but Python 3.11+ installed:

    python3 dev.py serve    create .venv, install, run the server on the embedded default (SQLite, offline)
    python3 dev.py test     create .venv, install the test tools, run ruff and the whole test suite

Both compile the extractor with mypyc when its source changed (about 20 s; without a C compiler the
pure-Python extractor serves, with the same results).

Stdlib only: this file runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _ensure_venv(requirements: Path) -> None:
    """Create .venv and install `requirements` once; reinstall only when the file changes."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs on whatever python3 the user has
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]})")
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256()
    for path in sorted({requirements, ROOT / "whatsappserver" / "requirements.txt"}):
        digest.update(path.read_bytes())
    stamp = VENV / f".installed-{requirements.stem}"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    print(f"installing {requirements.relative_to(ROOT)}", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(requirements)],
        check=True,
    )
    stamp.write_text(digest.hexdigest())


def _build_native_extractor() -> None:
    """Compile the extractor unless the current build matches its source (src/native_extractor.py)."""
    subprocess.call([str(PYTHON), "-m", "src.native_extractor", "build"], cwd=ROOT / "whatsappserver")


def serve(args: list[str]) -> int:
    _ensure_venv(ROOT / "whatsappserver" / "requirements.txt")
    _build_native_extractor()
    port = os.environ.get("PORT", "8000")
    command = [str(PYTHON), "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", port, *args]
    print(f"serving on http://127.0.0.1:{port} (health: /health, docs: /docs)", flush=True)
    return subprocess.call(command, cwd=ROOT / "whatsappserver")


def test(args: list[str]) -> int:
    _ensure_venv(ROOT / "requirements-dev.txt")
    _build_native_extractor()
    lint = subprocess.call([str(PYTHON), "-m", "ruff", "check", "."], cwd=ROOT)
    if lint != 0:
        print("ruff found problems (above)", flush=True)
        return lint
    return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)


def main() -> int:
    commands = {"serve": serve, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
