"""Files in and out: "files" and "stdin" in the request, the regular files a script
leaves under output/ as "files" in the answer, and every cap and refusal on the way."""

import base64
import time

import pytest

from pyexec_testlib import expect_error, expect_ok, expect_result, expect_script_error

# The caps of the "files" server: small enough to pass in a test.
FILES_ENV = {
    "PYEXEC_INPUT_FILES": "3",
    "PYEXEC_INPUT_BYTES": "1000",
    "PYEXEC_OUTPUT_FILES": "3",
    "PYEXEC_OUTPUT_BYTES": "1000",
    "PYEXEC_PATH_MAX": "40",
    "PYEXEC_PATH_DEPTH": "4",
}


@pytest.fixture(scope="module")
def files_server(server_factory):
    return server_factory(**FILES_ENV)


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def infile(path, data):
    return {"path": path, "content": b64(data)}


def outputs(body):
    """The answer's files as {path: bytes}."""
    files = body.get("files")
    assert isinstance(files, list) and files, body
    for f in files:
        assert set(f) == {"path", "content"}, f
    return {f["path"]: base64.b64decode(f["content"], validate=True) for f in files}


def expect_files(resp):
    """200 with result, stdout and files; returns (body, {path: bytes})."""
    assert resp.status == 200, resp
    body = resp.json()
    assert set(body) == {"result", "stdout", "files"}, body
    return body, outputs(body)


# --- input -------------------------------------------------------------------------------

def test_input_csv_read_by_pandas(server):
    csv = "city,sales\nParis,10\nLyon,5\nParis,7\n"
    script = ("import pandas as pd\n"
              "def main():\n"
              "    df = pd.read_csv('data/in.csv')\n"
              "    return df.groupby('city')['sales'].sum().to_dict()\n")
    resp = server.execute(script, files=[infile("data/in.csv", csv)])
    assert expect_ok(resp)["result"] == {"Lyon": 5, "Paris": 17}


def test_nested_input_paths(server):
    files = [infile("a.txt", "top"), infile("d1/d2/d3/deep.bin", b"\x00\xff\x01"),
             infile("d1/side.txt", "side"), infile("empty", b"")]
    script = ("import os\n"
              "def main():\n"
              "    return {p: open(p, 'rb').read().hex() for p in\n"
              "            ['a.txt', 'd1/d2/d3/deep.bin', 'd1/side.txt', 'empty']}\n")
    expect_result(server.execute(script, files=files),
                  {"a.txt": b"top".hex(), "d1/d2/d3/deep.bin": "00ff01",
                   "d1/side.txt": b"side".hex(), "empty": ""})


def test_stdin_with_several_lines(server):
    script = ("import sys\n"
              "def main():\n"
              "    first = sys.stdin.readline()\n"
              "    return [first, [line.rstrip('\\n') for line in sys.stdin]]\n")
    expect_result(server.execute(script, stdin="one\ntwo\n\nthree é\n"),
                  ["one\n", ["two", "", "three é"]])


def test_stdin_is_empty_without_the_field(server):
    script = "import sys\ndef main():\n    return sys.stdin.read()\n"
    expect_result(server.execute(script), "")
    expect_result(server.execute(script, stdin=""), "")


def test_input_file_and_stdin_reach_a_subprocess(server):
    script = ("import subprocess, sys\n"
              "def main():\n"
              "    out = subprocess.run([sys.executable, '-c', 'import sys; "
              "print(sys.stdin.read().upper()); print(open(\"in.txt\").read())'],\n"
              "                         capture_output=True, text=True).stdout\n"
              "    return out\n")
    expect_result(server.execute(script, stdin="abc", files=[infile("in.txt", "file")]),
                  "ABC\nfile\n")


@pytest.mark.parametrize("path", [
    "/etc/passwd", "../escape", "a/../../b", "a//b", "a/", "", ".", "./a", "a/./b", "..",
    "nul\u0000byte",
], ids=["absolute", "dotdot", "inner-dotdot", "empty-component", "trailing-slash", "empty",
        "dot", "leading-dot", "inner-dot", "dotdot-only", "nul"])
def test_bad_input_path(server, path):
    resp = server.execute("def main():\n    return 1\n", files=[infile(path, "x")])
    body = expect_error(resp, 400, "invalid_request")
    if path and "\u0000" not in path:
        assert f'"{path}"' in body["message"], body


def test_input_path_caps(files_server):
    # files_server: PYEXEC_PATH_MAX=40, PYEXEC_PATH_DEPTH=4
    for path, word in [("x" * 41, "too long"), ("a/b/c/d/e", "too deeply")]:
        body = expect_error(files_server.execute("def main():\n    return 1\n",
                                                 files=[infile(path, "x")]),
                            400, "invalid_request")
        assert word in body["message"] and path in body["message"], body
    resp = files_server.execute("def main():\n    return open('a/b/c/' + 'd' * 34).read()\n",
                                files=[infile("a/b/c/" + "d" * 34, "fits")])
    expect_result(resp, "fits")


@pytest.mark.parametrize("paths", [["same", "same"], ["dir", "dir/file"], ["a/b/c", "a/b"]],
                         ids=["duplicate", "file-then-dir", "dir-then-file"])
def test_clashing_input_paths(server, paths):
    resp = server.execute("def main():\n    return 1\n", files=[infile(p, "x") for p in paths])
    body = expect_error(resp, 400, "invalid_request")
    assert "clash" in body["message"], body


@pytest.mark.parametrize("content", ["YQ", "YQ=", "Y=Q=", "YQ==\n", "YQ ==", "YR==", "!!!!",
                                     "YWJj\nZGVm", "-_8="],
                         ids=["unpadded", "short-pad", "inner-pad", "newline", "space",
                              "nonzero-bits", "symbols", "wrapped", "urlsafe"])
def test_bad_base64(server, content):
    resp = server.execute("def main():\n    return 1\n",
                          files=[{"path": "in.bin", "content": content}])
    body = expect_error(resp, 400, "invalid_request")
    assert "base64" in body["message"] and "in.bin" in body["message"], body


@pytest.mark.parametrize("extra", [
    {"files": {"path": "a", "content": ""}}, {"files": ["a"]}, {"files": [{"path": "a"}]},
    {"files": [{"path": "a", "content": "", "mode": 1}]}, {"files": [{"path": 1, "content": ""}]},
    {"files": [{"path": "a", "content": None}]}, {"stdin": 5}, {"stdin": None},
], ids=["files-object", "item-string", "no-content", "extra-key", "path-int", "content-null",
        "stdin-int", "stdin-null"])
def test_bad_files_and_stdin_shapes(server, extra):
    resp = server.execute("def main():\n    return 1\n", **extra)
    expect_error(resp, 400, "invalid_request")


def test_input_caps(files_server):
    # files_server: PYEXEC_INPUT_FILES=3, PYEXEC_INPUT_BYTES=1000 (files and stdin together)
    script = "def main():\n    return 1\n"
    body = expect_error(files_server.execute(
        script, files=[infile(f"f{i}", "x") for i in range(4)]), 413, "payload_too_large")
    assert "PYEXEC_INPUT_FILES" in body["message"], body
    body = expect_error(files_server.execute(script, files=[infile("big", "x" * 1001)]),
                        413, "payload_too_large")
    assert "PYEXEC_INPUT_BYTES" in body["message"], body
    body = expect_error(files_server.execute(script, files=[infile("half", "x" * 600)],
                                             stdin="y" * 401), 413, "payload_too_large")
    assert "PYEXEC_INPUT_BYTES" in body["message"], body
    expect_result(files_server.execute(
        "import sys\ndef main():\n    return len(open('f2').read()) + len(sys.stdin.read())\n",
        files=[infile("f0", ""), infile("f1", ""), infile("f2", "x" * 600)], stdin="y" * 400),
        1000)


def test_default_caps_take_a_few_mb_of_csv(server):
    csv = "n,sq\n" + "".join(f"{i},{i * i}\n" for i in range(350000))  # ~5.5 MB
    assert len(csv) > 5_000_000
    script = ("import pandas as pd\n"
              "def main():\n"
              "    df = pd.read_csv('big.csv')\n"
              "    return [len(df), int(df['sq'].iloc[-1])]\n")
    expect_result(server.execute(script, files=[infile("big.csv", csv)]),
                  [350000, 349999 ** 2])


# --- output ------------------------------------------------------------------------------

def test_exact_v1_body_without_output(server):
    for script in ["def main():\n    print('hi')\n    return 1\n",
                   "import os\ndef main():\n    print('hi')\n    os.mkdir('output')\n"
                   "    os.mkdir('output/empty')\n    return 1\n"]:
        resp = server.execute(script)
        assert resp.status == 200 and resp.body == b'{"result":1,"stdout":"hi\\n"}', resp


def test_output_csv_round_trip(server):
    csv = "k,v\na,1\nb,2\na,3\n"
    script = ("import os, pandas as pd\n"
              "def main():\n"
              "    df = pd.read_csv('in.csv').groupby('k', as_index=False)['v'].sum()\n"
              "    os.makedirs('output', exist_ok=True)\n"
              "    df.to_csv('output/sums.csv', index=False)\n"
              "    return len(df)\n")
    body, files = expect_files(server.execute(script, files=[infile("in.csv", csv)]))
    assert body["result"] == 2 and files == {"sums.csv": b"k,v\na,4\nb,2\n"}


def test_output_nested_binary(server):
    script = ("import os\n"
              "def main():\n"
              "    os.makedirs('output/a/b/c')\n"
              "    open('output/a/b/c/all.bin', 'wb').write(bytes(range(256)) * 4)\n"
              "    open('output/a/zero.bin', 'wb').write(b'\\0' * 10)\n"
              "    open('output/top.txt', 'w').write('é')\n"
              "    open('output/empty', 'wb').close()\n"
              "    open('not-output.txt', 'w').write('kept out')\n"
              "    return 'done'\n")
    body, files = expect_files(server.execute(script))
    assert files == {"a/b/c/all.bin": bytes(range(256)) * 4, "a/zero.bin": b"\0" * 10,
                     "top.txt": "é".encode(), "empty": b""}
    assert [f["path"] for f in body["files"]] == sorted(files), body


def test_output_kept_on_script_error(server):
    script = ("import os\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    open('output/partial.txt', 'w').write('so far')\n"
              "    print('before')\n"
              "    raise ValueError('boom')\n")
    resp = server.execute(script)
    body = expect_script_error(resp, "exception")
    assert "traceback" in body and body["stdout"] == "before\n"
    assert outputs(body) == {"partial.txt": b"so far"}


def test_output_on_result_not_json(server):
    script = ("import os\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    open('output/r.txt', 'w').write('x')\n"
              "    return None\n")
    body = expect_script_error(server.execute(script), "result_not_json")
    assert outputs(body) == {"r.txt": b"x"}


def test_output_caps(files_server):
    # files_server: PYEXEC_OUTPUT_FILES=3, PYEXEC_OUTPUT_BYTES=1000, PYEXEC_PATH_MAX=40,
    # PYEXEC_PATH_DEPTH=4
    write = ("import os\n"
             "def main():\n"
             "    os.makedirs('output', exist_ok=True)\n"
             "    for path, size in {}:\n"
             "        os.makedirs(os.path.dirname('output/' + path), exist_ok=True)\n"
             "        open('output/' + path, 'wb').write(b'x' * size)\n"
             "    print('printed')\n"
             "    return 1\n")
    cases = [
        ([("a", 1), ("b", 1), ("c", 1), ("d", 1)], "PYEXEC_OUTPUT_FILES"),
        ([("a", 600), ("b", 401)], "PYEXEC_OUTPUT_BYTES"),
        ([("big", 5000)], "PYEXEC_OUTPUT_BYTES"),
        ([("n" * 41, 1)], "PYEXEC_PATH_MAX"),
        ([("a/b/c/d/e", 1)], "PYEXEC_PATH_DEPTH"),
    ]
    for files, cap in cases:
        resp = files_server.execute(write.format(files))
        body = expect_script_error(resp, "output_too_large")
        assert cap in body["message"] and body["stdout"] == "printed\n", body
        assert "files" not in body and len(resp.body) < 2000, resp
    _, got = expect_files(files_server.execute(
        write.format([("a", 500), ("b/c/d/" + "e" * 34, 400), ("c", 100)])))
    assert sorted(got) == ["a", "b/c/d/" + "e" * 34, "c"] and sum(map(len, got.values())) == 1000


def test_symlinks_under_output_are_not_followed(server):
    script = ("import os\n"
              "def main():\n"
              "    os.makedirs('output/sub')\n"
              "    os.symlink('/etc/passwd', 'output/passwd')\n"
              "    os.symlink('/proc/self/environ', 'output/environ')\n"
              "    os.symlink('/etc', 'output/etc-dir')\n"
              "    os.symlink('/proc/self/environ', 'output/sub/environ')\n"
              "    os.symlink('sub', 'output/loop')\n"
              "    open('output/real.txt', 'w').write('real')\n"
              "    return 1\n")
    resp = server.execute(script)
    _, files = expect_files(resp)
    assert files == {"real.txt": b"real"}, files
    for secret in (b"root:", b"nobody:", b"PYEXEC", b"PATH="):
        assert secret not in resp.body


def test_symlinked_output_directory_is_not_followed(server):
    script = ("import os\n"
              "def main():\n"
              "    os.symlink('/etc', 'output')\n"
              "    return 1\n")
    resp = server.execute(script)
    assert resp.status == 200 and resp.body == b'{"result":1,"stdout":""}', resp


def test_fifo_and_socket_under_output_are_skipped_in_time(server):
    script = ("import os, socket\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    os.mkfifo('output/fifo')\n"
              "    s = socket.socket(socket.AF_UNIX)\n"
              "    s.bind('output/sock')\n"
              "    open('output/real.txt', 'w').write('real')\n"
              "    return 1\n")
    t0 = time.monotonic()
    resp = server.execute(script, timeout=5, http_timeout=30)
    elapsed = time.monotonic() - t0
    _, files = expect_files(resp)
    assert files == {"real.txt": b"real"}
    print(f"FIFO and socket under output/: answered in {elapsed * 1000:.0f} ms")


def test_forked_child_writing_after_main_returns(server):
    script = ("import os, time\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    if os.fork() == 0:\n"
              "        with open('output/log.txt', 'a') as f:\n"
              "            while True:\n"
              "                f.write('x' * 100)\n"
              "                f.flush()\n"
              "                time.sleep(0.001)\n"
              "    time.sleep(0.05)\n"
              "    return 'parent done'\n")
    for _ in range(3):
        body, files = expect_files(server.execute(script, timeout=5))
        assert body["result"] == "parent done"
        log = files["log.txt"]
        assert 0 < len(log) <= 8 * 1024 * 1024 and log == b"x" * len(log), len(log)


def test_forked_child_filling_output_over_the_cap(files_server):
    script = ("import os, time\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    if os.fork() == 0:\n"
              "        i = 0\n"
              "        while True:\n"
              "            open(f'output/{i}', 'w').write('x' * 400)\n"
              "            i += 1\n"
              "    time.sleep(0.1)\n"
              "    return 1\n")
    expect_script_error(files_server.execute(script, timeout=5), "output_too_large")


def test_hard_links(server):
    script = ("import os\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    open('outside.txt', 'w').write('mine')\n"
              "    open('output/a.txt', 'w').write('same inode')\n"
              "    os.link('output/a.txt', 'output/b.txt')\n"
              "    os.link('outside.txt', 'output/c.txt')\n"
              "    try:\n"
              "        os.link('/etc/passwd', 'output/passwd')\n"
              "        linked = True\n"
              "    except OSError:\n"
              "        linked = False\n"
              "    return linked\n")
    resp = server.execute(script)
    _, files = expect_files(resp)
    assert files.get("a.txt") == files.get("b.txt") == b"same inode", files
    assert files.get("c.txt") == b"mine", files
    # /etc/passwd is on another file system (tier full: the jail's tmpfs; restricted: the
    # run's tmpfs) or not linkable (protected_hardlinks); either way it never comes back.
    assert "passwd" not in files and b"root:" not in resp.body


def test_sparse_files(server):
    script = ("import os\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    with open('output/sparse.bin', 'wb') as f:\n"
              "        f.seek(1_000_000)\n"
              "        f.write(b'end')\n"
              "    return os.stat('output/sparse.bin').st_blocks * 512 < 1_000_000\n")
    body, files = expect_files(server.execute(script))
    assert files == {"sparse.bin": b"\0" * 1_000_000 + b"end"}
    huge = ("import os\n"
            "def main():\n"
            "    os.mkdir('output')\n"
            "    with open('output/huge.bin', 'wb') as f:\n"
            "        f.truncate(60 * 1024 * 1024)\n"
            "    return 1\n")
    t0 = time.monotonic()
    resp = server.execute(huge)
    body = expect_script_error(resp, "output_too_large")
    assert "PYEXEC_OUTPUT_BYTES" in body["message"] and len(resp.body) < 4000, resp
    print(f"60 MiB sparse file under output/: refused in {(time.monotonic() - t0) * 1000:.0f} ms")


def test_non_utf8_file_name(server):
    script = ("import os\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    open(b'output/bad\\xff\\xfe.txt', 'w').write('x')\n"
              "    return 1\n")
    body = expect_script_error(server.execute(script), "invalid_output")
    assert "UTF-8" in body["message"], body


def test_utf8_file_names_come_back(server):
    script = ("import os\n"
              "def main():\n"
              "    os.makedirs('output/données')\n"
              "    open('output/données/résumé ✓.txt', 'w').write('ok')\n"
              "    return 1\n")
    _, files = expect_files(server.execute(script))
    assert files == {"données/résumé ✓.txt": b"ok"}


def test_runs_do_not_see_each_others_files(server):
    first = server.execute("import os\ndef main():\n    os.mkdir('output')\n"
                           "    open('output/secret', 'w').write('s')\n    return 1\n",
                           files=[infile("in/secret.txt", "s")])
    expect_files(first)
    resp = server.execute("import os\ndef main():\n    return sorted(os.listdir('.'))\n")
    expect_result(resp, [])


def test_cold_jails_behave_as_ready_ones(server_factory):
    """PYEXEC_POOL=0: every run starts its own jail; files and stdin work the same."""
    cold = server_factory(PYEXEC_POOL="0")
    script = ("import os, sys\n"
              "def main():\n"
              "    os.mkdir('output')\n"
              "    open('output/out.txt', 'w').write(open('in/a.txt').read() + sys.stdin.read())\n"
              "    return 1\n")
    _, files = expect_files(cold.execute(script, files=[infile("in/a.txt", "file+")],
                                         stdin="stdin"))
    assert files == {"out.txt": b"file+stdin"}
