"""The one list of error codes, src/errcodes.h, against everything else that names codes: the
runner (which may report only the codes marked ERR_BY_RUNNER), the C sources that answer with a
code, and docs/openapi.json. No server is needed: these read the files, so a code added in one
place and not the others fails here, not in production."""

import ast
import json
import re

from pyexec_testlib import REPO_ROOT

HEADER = (REPO_ROOT / "src" / "errcodes.h").read_text()
# Outcomes that are not error codes of the contract: success, a client that hung up (logged
# 499, never answered) and start-up configuration errors (never on the wire).
NOT_CODES = {"ok", "client_gone", "config"}


def header_codes(macro):
    """{code: source} of one X-macro of src/errcodes.h."""
    body = re.search(rf"#define {macro}\(X\)(.*?)(?:\n\n|\n#endif)", HEADER, re.S)
    assert body, f"{macro} not found in src/errcodes.h"
    pairs = re.findall(r"X\((\w+),\s*(ERR_BY_\w+)\)", body.group(1))
    assert pairs, f"{macro} lists no codes"
    return dict(pairs)


EXECUTE = header_codes("ERRCODES_EXECUTE")
ROUTING = header_codes("ERRCODES_ROUTING")
ALL = {**EXECUTE, **ROUTING}
BY_RUNNER = {c for c, src in EXECUTE.items() if src == "ERR_BY_RUNNER"}


def runner_codes():
    """Every code runner/runner.py can report: the first argument of each ScriptError(...);
    one that is not a literal string could be anything, so it fails the test."""
    tree = ast.parse((REPO_ROOT / "runner" / "runner.py").read_text())
    codes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ScriptError":
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), \
                f"runner.py line {node.lineno}: ScriptError's code is not a literal string"
            codes.add(first.value)
    return codes


def test_runner_reports_only_codes_of_the_list():
    codes = runner_codes()
    assert codes, "no ScriptError(...) found in runner.py"
    assert codes <= BY_RUNNER, \
        f"runner.py reports codes src/errcodes.h does not give the runner: {codes - BY_RUNNER}"
    # and the list gives the runner nothing it never reports (frame.c would accept a forgery)
    assert BY_RUNNER <= codes, f"marked ERR_BY_RUNNER but never reported: {BY_RUNNER - codes}"


def c_codes():
    """Code literals in src/*.c where an answer is made: err_set, api_error_response,
    respond_error (a status, then the code), script_error, metrics_run and r->code."""
    found = {}
    patterns = [r"\b\d{3},\s*\"([a-z_]+)\"", r"\berr_set\([^,]+,\s*0,\s*\"([a-z_]+)\"",
                r"\bscript_error\([^,]+,[^,]+,\s*\"([a-z_]+)\"",
                r"->code\s*=\s*\"([a-z_]+)\""]
    for path in sorted((REPO_ROOT / "src").glob("*.c")):
        text = path.read_text()
        for pat in patterns:
            for code in re.findall(pat, text):
                found.setdefault(code, path.name)
        for call in re.findall(r"\bmetrics_run\(([^;]*)\);", text):
            for code in re.findall(r"\"([a-z_]+)\"", call):
                found.setdefault(code, path.name)
    return found


def test_c_sources_answer_only_codes_of_the_list():
    found = c_codes()
    assert {"timeout", "busy", "not_found", "invalid_request"} <= set(found), found
    unknown = {c: f for c, f in found.items() if c not in ALL and c not in NOT_CODES}
    assert not unknown, f"codes in src/ that src/errcodes.h does not list: {unknown}"


def openapi_error_codes():
    """{schema name: set of codes} for every schema of docs/openapi.json that fixes "error"."""
    doc = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())
    out = {}

    def walk(name, node):
        if isinstance(node, dict):
            err = (node.get("properties") or {}).get("error")
            if isinstance(err, dict) and ("enum" in err or "const" in err):
                out.setdefault(name, set()).update(err.get("enum") or [err.get("const")])
            for value in node.values():
                walk(name, value)
        elif isinstance(node, list):
            for value in node:
                walk(name, value)

    for name, schema in doc["components"]["schemas"].items():
        walk(name, schema)
    return out


def test_openapi_lists_the_same_codes():
    schemas = openapi_error_codes()
    documented = set().union(*schemas.values())
    assert documented == set(ALL), \
        (f"docs/openapi.json and src/errcodes.h differ: only in the document "
         f"{documented - set(ALL)}, only in the header {set(ALL) - documented}")
    # A script's errors (an answer with stdout): the runner's codes and the server's run ones.
    run_codes = BY_RUNNER | {"output_too_large", "invalid_output", "timeout", "killed"}
    assert schemas["ScriptError"] == run_codes, schemas["ScriptError"]
