"""Lists every module a script can import: the standard library's and every installed package's
(numpy, pandas and their dependencies), with all their submodules. Prints one name a line.

Run inside an image with its python3 (tests/image/run.sh runs it in the image and in the
same packages before the image's clean-up, and compares). A module that fails to import is
left out; test suites and the deliberate removals of scripts/image-rootfs are not walked.
"""

import contextlib
import importlib
import io
import os
import pkgutil
import re
import sys
import sysconfig

# What scripts/image-rootfs removes on purpose (test suites, their helper modules, pytz's stray
# second copy): neither side walks them, so they do not count as lost.
REMOVED = re.compile(r"(^|\.)(tests?|conftest)(\.|$)|^_?x?x?test|^_ctypes_test|^xx"
                     r"|^numpy\._core\._simd$|^pytz\.pytz(\.|$)")
# Importing these has effects beyond the import (a browser opened, a turtle window).
SKIP = {"antigravity", "turtle", "turtledemo", "idlelib", "tkinter"}


def try_import(name):
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - any failure (even SystemExit) means not importable
        return None


def walk(name, found):
    if name in SKIP or REMOVED.search(name) or name in found:
        return
    module = try_import(name)
    if module is None:
        return
    found.add(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
        walk(f"{name}.{info.name}", found)


def main():
    stdlib = sysconfig.get_path("stdlib")
    top = set(sys.stdlib_module_names)
    for path in [stdlib, os.path.join(stdlib, "lib-dynload")] + [
            p for p in sys.path if p.endswith(("dist-packages", "site-packages"))]:
        top.update(info.name for info in pkgutil.iter_modules([path]))
    found = set()
    for name in sorted(top):
        walk(name, found)
    print("\n".join(sorted(found)))


if __name__ == "__main__":
    main()
