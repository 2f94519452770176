"""The extractor compiled to C with mypyc: the same source, about 1.7x faster, used only while it is current.

`python -m src.native_extractor build` (run by `dev.py` and Render's build command) copies
watch_info_extractor.py to src/_native/ and compiles the copy there; `load()` returns the compiled module only
when it was built from the very source files now on disk, so an edited extractor is never shadowed by a stale
build. Without a C compiler, or with mypy missing, nothing is built and the pure-Python module serves, with
identical results (tests/test_native_extractor.py compares the two).

    python -m src.native_extractor build     compile if the source changed since the last build
    python -m src.native_extractor status    say which implementation serves and why
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

SRC_DIR = Path(__file__).resolve().parent
SOURCE = SRC_DIR / "watch_info_extractor.py"
# The modules whose types the compiled code relies on: a change to any of them calls for a new build.
DEPENDENCIES = (SOURCE, SRC_DIR / "watch_models.py", SRC_DIR / "fx.py", SRC_DIR / "catalog" / "__init__.py")
NATIVE_DIR = SRC_DIR / "_native"  # a package of build output, ignored by git
NATIVE_MODULE = "src._native.watch_info_extractor"
STAMP = NATIVE_DIR / "SOURCE_SHA256"


def source_digest() -> str:
    """Digest of the sources a build compiles, plus the interpreter's ABI tag the compiled files are for."""
    digest = hashlib.sha256(str(sysconfig.get_config_var("EXT_SUFFIX")).encode())
    for path in DEPENDENCIES:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current() -> bool:
    """True when the last build was made from the sources now on disk."""
    try:
        return STAMP.read_text().strip() == source_digest()
    except OSError:
        return False


def load() -> ModuleType | None:
    """The compiled extractor when a current build exists and imports; otherwise None (pure Python serves)."""
    if not is_current():
        return None
    try:
        return importlib.import_module(NATIVE_MODULE)
    except Exception as exc:  # a build for another platform, a missing runtime library...: fall back
        logger.warning("compiled extractor not loaded (%s: %s): pure Python serves", type(exc).__name__, exc)
        return None


def load_pure() -> ModuleType:
    """The pure-Python extractor, loaded from its .py under another name, whatever build is current (for the
    tests and the benchmark that compare the two)."""
    name = "src._pure_watch_info_extractor"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered before it runs, as an import would
    spec.loader.exec_module(module)
    return module


def build(force: bool = False) -> bool:
    """Compile the extractor unless a current build exists; False (and the reason logged) when it cannot."""
    if not force and is_current():
        return True
    try:
        from mypyc.build import mypycify
        from setuptools import setup
    except ImportError as exc:
        logger.warning("extractor not compiled (%s): the pure-Python extractor will serve", exc)
        return False
    digest = source_digest()
    shutil.rmtree(NATIVE_DIR, ignore_errors=True)
    NATIVE_DIR.mkdir()
    (NATIVE_DIR / "__init__.py").write_text('"""Build output of src/native_extractor.py (not in git)."""\n')
    (NATIVE_DIR / SOURCE.name).write_bytes(SOURCE.read_bytes())
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="mypyc-") as tmp:
        os.environ["MYPY_CACHE_DIR"] = str(Path(tmp) / "mypy_cache")
        try:
            os.chdir(SRC_DIR.parent)  # mypyc names the module from the path: src/_native/...
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                extensions = mypycify([f"src/_native/{SOURCE.name}"], target_dir=str(Path(tmp) / "c"))
                # --inplace puts the modules in src/_native; every other file stays in the temporary folder.
                temp_dirs = ["--build-temp", str(Path(tmp) / "o"), "--build-lib", str(Path(tmp) / "lib")]
                setup(
                    name="watch-info-extractor-native",
                    ext_modules=extensions,
                    script_args=["build_ext", "--inplace", *temp_dirs],
                )
        except (Exception, SystemExit) as exc:
            shutil.rmtree(NATIVE_DIR, ignore_errors=True)
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            logger.warning("extractor not compiled (%s); the pure-Python extractor will serve", reason)
            return False
        finally:
            os.chdir(cwd)
            os.environ.pop("MYPY_CACHE_DIR", None)
    STAMP.write_text(digest + "\n")
    return True


def main(argv: list[str]) -> int:
    # This module's messages only: setuptools logs every compiler command through the root logger.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    command = argv[0] if argv else "status"
    if command == "build":
        if is_current() and "--force" not in argv:
            logger.info("compiled extractor is current (%s)", NATIVE_DIR)
            return 0
        logger.info("compiling the extractor with mypyc (about 20 s) ...")
        if build(force=True):
            logger.info("compiled extractor built in %s", NATIVE_DIR)
        return 0  # a machine without a compiler still runs, on the pure-Python extractor
    if command == "status":
        state = "compiled (mypyc)" if load() is not None else "pure Python"
        why = "" if is_current() else " (no current build: python -m src.native_extractor build)"
        logger.info("extractor: %s%s", state, why)
        return 0
    logger.error("usage: python -m src.native_extractor [build [--force] | status]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
