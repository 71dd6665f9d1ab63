"""pyexec runner: the only Python we write. It runs inside the jail, as nobody.

    python3 -I -u runner.py RESULT_FD STATUS_FD RESULT_MAX PRELOAD [OUTPUT_CAPS [TIER]]

Protocol with pyexecd (see docs/security.md):
1. Imports the PRELOAD modules (comma-separated, may be empty), writes "READY\\n" on
   RESULT_FD, then waits for its input on stdin until EOF. A jail may wait there, ready, for
   a while before the server hands it a script. The input is a JSON header line
   {"script": N, "stdin": M, "files": [[PATH, SIZE], ...]} and then those bytes back to back;
   the files are written under the working directory and the stdin bytes become fd 0.
2. Runs the script as a module named "__script__" (never "__main__"), then calls main().
3. Writes one frame on RESULT_FD: a header line, {"status": "ok"} followed by the result's JSON,
   or {"status": "error", "error": CODE, "message": TEXT, "traceback": TEXT}.
What the script prints (stdout and stderr) goes to fd 1 and nowhere else.
4. The jail's first process (the pid namespace's init) never runs user code: once the script's
   process is gone, or has said on its own "done" pipe that its frame is written, it writes
   that process's exit status ("<code> <n>\n", 128 + signal when killed, 0 after "done") on
   STATUS_FD, a descriptor the script's process never holds, followed by n bytes of records of
   the files left under output/ (src/files.h; OUTPUT_CAPS is "files,bytes,path length,depth"):
   in tier full it first kills every other process of the jail, so nothing writes there any
   more, and reaps them before (or, after "done", only after) its report. pyexecd trusts a
   frame only with a status of 0, and answers without waiting for the rest of the jail to go.
"""

import gc
import inspect
import json
import linecache
import mmap
import os
import resource
import signal
import sys
import traceback
import types

# The runner's own tools, taken before any user code runs: a script may patch the modules.
_write = os.write
_exit = os._exit
_JSONEncoder = json.JSONEncoder
_set_int_max_str_digits = sys.set_int_max_str_digits
_INT_DIGITS_DEFAULT = sys.int_info.default_max_str_digits
_json_loads = json.loads
_pause = signal.pause
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)}
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 0x7F: "\\u007f"})

# Queued signals per run (tier full): far below the host's per-user default (about 96 000 on
# a 12 GB host), so runs at once cannot take root's.
SIGPENDING_MAX = 256
M_ARENA_MAX = -8  # mallopt
FILENAME = "<script>"
MODULE_NAME = "__script__"
MESSAGE_MAX = 2000
TRACEBACK_MAX = 60000


class ScriptError(Exception):
    """A failure to report as the contract's error `code`."""

    def __init__(self, code, message, exc=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.exc = exc


def hide_fd(fd, below_top=0):
    """Moves one of the runner's channels to the highest descriptors, so a script that writes
    to low descriptors cannot corrupt it by accident."""
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1 - below_top
    import fcntl

    hidden = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(top, fd + 1))
    os.close(fd)
    return hidden


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[_write(fd, view):]


def read_input():
    """The script; the input files are written and stdin set up on the way."""
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    data = memoryview(b"".join(chunks))
    end = bytes(data[:1 << 20]).index(b"\n")
    header = _json_loads(bytes(data[:end]))
    at = end + 1
    script = bytes(data[at:at + header["script"]])
    at += header["script"]
    stdin = data[at:at + header["stdin"]]
    at += header["stdin"]
    for path, size in header["files"]:
        write_input_file(path, data[at:at + size])
        at += size
    give_stdin(stdin)
    return script


def write_input_file(path, content):
    """Writes one input file under the working directory (the server checked the path)."""
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            write_all(fd, content)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ScriptError("exception", f"The input file {path} could not be written "
                          f"({exc.strerror}); send less data.")


def give_stdin(data):
    """fd 0 reads data: a file of the run's own with no name (its working directory counts it;
    the restricted tier refuses memfds), or /dev/null when there is none."""
    if data:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:  # a file system without O_TMPFILE: a name, gone at once
            import tempfile

            path = tempfile.mktemp(prefix=".stdin-", dir=".")
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
            os.unlink(path)
        write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def clean_text(text, limit):
    """Valid UTF-8 (no lone surrogates), at most `limit` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        half = limit // 2
        text = text[:half] + "\n...\n" + text[-half:]
    return text


def exc_text(exc):
    try:
        detail = str(exc)
    except BaseException:
        detail = "(its message could not be shown)"
    name = type(exc).__name__
    return clean_text(f"{name}: {detail}" if detail else name, MESSAGE_MAX)


def user_traceback(exc):
    """The traceback with the user's frames only: no runner frames, no paths."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return clean_text("".join(lines), TRACEBACK_MAX)


def compile_script(source):
    try:
        code = compile(source, FILENAME, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = f"line {exc.lineno}" if exc.lineno else "an unknown line"
        raise ScriptError(
            "syntax_error",
            clean_text(f"The script does not compile: {exc.msg} at {line}; fix the syntax there.",
                       MESSAGE_MAX),
            exc,
        )
    except ValueError as exc:  # NUL bytes in the source
        raise ScriptError("syntax_error", f"The script does not compile: {exc}; remove them.")
    return code


def load_module(code, text):
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = FILENAME
    sys.modules[MODULE_NAME] = module
    linecache.cache[FILENAME] = (len(text), None, text.splitlines(True), FILENAME)
    sys.argv = [FILENAME]
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        raise ScriptError("exception", "The script called sys.exit() while loading; define "
                          "main() and return a value from it instead of exiting.", exc)
    except MemoryError as exc:
        raise ScriptError("memory_limit", "out of memory", exc)
    except BaseException as exc:
        raise ScriptError("exception", f"The script raised {exc_text(exc)} while loading; "
                          "fix the code outside main().", exc)
    return module


def find_main(module):
    if "main" not in module.__dict__:
        raise ScriptError("no_main", "The script defines no main(); add `def main():` that "
                          "returns the result.")
    main = module.__dict__["main"]
    if not callable(main):
        raise ScriptError("main_not_callable", f"main is a {type(main).__name__}, not a "
                          "function; define `def main():` that returns the result.")
    try:
        signature = inspect.signature(main)
    except Exception:
        return main  # nothing to inspect (some builtins, odd objects): calling it will tell
    try:
        signature.bind()
    except TypeError:
        raise ScriptError("main_not_callable", f"main{signature} needs arguments, but it is "
                          "called with none; define `def main():`.")
    return main


def call_main(main):
    try:
        value = main()
        if inspect.isawaitable(value):
            import asyncio

            async def wait_for(awaitable):
                return await awaitable

            value = asyncio.run(wait_for(value))
    except SystemExit as exc:
        raise ScriptError("exception", "main() called sys.exit(); return a value from main() "
                          "instead of exiting.", exc)
    except MemoryError as exc:
        raise ScriptError("memory_limit", "out of memory", exc)
    except BaseException as exc:
        raise ScriptError("exception", f"main() raised {exc_text(exc)}.", exc)
    return value


def type_name(obj):
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def not_json(message):
    return ScriptError("result_not_json", message)


# Hints for values with no single JSON meaning, by a class in the value's MRO ("module.name").
HINTS = {
    "pandas.core.frame.DataFrame": 'df.to_dict(orient="records")',
    "pandas.core.series.Series": "s.tolist() or s.to_dict()",
    "pandas.core.indexes.base.Index": "index.tolist()",
    "datetime.datetime": "value.isoformat()",
    "datetime.date": "value.isoformat()",
    "datetime.time": "value.isoformat()",
    "datetime.timedelta": "value.total_seconds()",
    "numpy.datetime64": "str(value)",
    "numpy.timedelta64": "str(value)",
    "decimal.Decimal": "str(value) or float(value)",
    "fractions.Fraction": "float(value) or str(value)",
    "builtins.complex": "[value.real, value.imag]",
    "numpy.complexfloating": "[value.real, value.imag]",
    "builtins.set": "sorted(value) or list(value)",
    "builtins.frozenset": "sorted(value) or list(value)",
    "builtins.bytes": "value.decode()",
    "builtins.bytearray": "value.decode()",
    "numpy.ndarray": "value.tolist(), after converting its elements",
}


def hint_for(obj):
    for cls in type(obj).__mro__:
        hint = HINTS.get(f"{cls.__module__}.{cls.__qualname__}")
        if hint:
            return hint
    return "to dicts, lists, str, numbers or bool"


def numpy_json(obj, result_max):
    """What a numpy value means in JSON, or None when it has no single meaning. numpy
    scalars of bool, integer and float types are that bool or number; a plain ndarray of those
    dtypes is the (nested) list .tolist() gives. The encoder still refuses NaN and Infinity."""
    np = sys.modules.get("numpy")
    if np is None or not type(obj).__module__.startswith("numpy"):
        return None
    if isinstance(obj, (np.bool_, np.integer, np.floating)) and \
            not isinstance(obj, np.timedelta64):  # a signedinteger, but a duration
        return obj.item()
    if type(obj) is np.ndarray and obj.dtype.kind in "biuf":
        if obj.size > result_max // 2 + 1:  # each element takes a byte and a comma at least
            raise ScriptError("result_too_large", f"main() returned a numpy array of "
                              f"{obj.size} elements, whose JSON encoding is over the "
                              f"{result_max}-byte limit; return less data.")
        return obj.tolist()
    return None


def describe(obj):
    name = type_name(obj)
    dtype = getattr(obj, "dtype", None) if name.startswith("numpy.") else None
    return f"{name} of dtype {dtype}" if dtype is not None else name


def encode_result(value, result_max):
    if value is None:
        raise not_json("main() returned None; return a JSON value (a dict, list, str, number "
                       "or bool).")
    offending = []

    def convert(obj):
        converted = numpy_json(obj, result_max)
        if converted is not None:
            return converted
        offending.append(obj)
        raise TypeError(type_name(obj))

    # Back to Python's default, which json.loads also applies: a script that lifted it to
    # return a huge int learns why no client could read it instead of waiting for its digits.
    _set_int_max_str_digits(_INT_DIGITS_DEFAULT)
    try:
        encoder = _JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                               default=convert)
        data = encoder.encode(value).encode("utf-8")
    except ScriptError:
        raise
    except RecursionError:
        raise not_json("main() returned a value nested too deeply to encode as JSON; flatten "
                       "it.")
    except MemoryError as exc:
        raise ScriptError("memory_limit", "out of memory", exc)
    except UnicodeEncodeError:
        raise not_json("main() returned a str that is not valid Unicode (a lone surrogate); "
                       "return text that can be encoded as UTF-8.")
    except ValueError as exc:
        if "Circular" in str(exc):
            raise not_json("main() returned a value that contains itself; JSON cannot encode "
                           "circular references.")
        if "integer string conversion" in str(exc):
            raise not_json(f"main() returned an integer of more than {_INT_DIGITS_DEFAULT} "
                           "digits, beyond the range of a double (about 1.8e308), which "
                           "common JSON parsers refuse to read; return it as a str, for "
                           "example str(n).")
        raise not_json("main() returned NaN or Infinity, which JSON cannot encode; replace "
                       "them (for example with None or a string).")
    except TypeError as exc:
        if offending:
            obj = offending[0]
            raise not_json(f"main() returned a value containing a {describe(obj)}, which "
                           f"has no single JSON meaning; convert it first, for example with "
                           f"{hint_for(obj)}.")
        raise not_json(f"main() returned a dict JSON cannot encode: {exc}; use str keys.")
    except Exception as exc:  # the value's own code raised while being encoded
        raise not_json(f"main() returned a {type_name(value)} whose encoding raised "
                       f"{exc_text(exc)}; return plain dicts, lists, str, numbers or bool.")
    if len(data) > result_max:
        raise ScriptError("result_too_large", f"main() returned a value whose JSON encoding is "
                          f"{len(data)} bytes, over the {result_max}-byte limit; return less "
                          "data.")
    return data


def json_str(text):
    """A JSON string by hand, so a script that patched json cannot break error reports."""
    return '"' + text.translate(_JSON_ESCAPES) + '"'


def error_frame(err):
    fields = [("status", "error"), ("error", err.code),
              ("message", clean_text(err.message, MESSAGE_MAX))]
    if err.exc is not None and err.code in ("syntax_error", "exception"):
        try:
            fields.append(("traceback", user_traceback(err.exc)))
        except BaseException:
            pass  # the script broke traceback formatting: report without one
    body = ",".join(json_str(k) + ":" + json_str(v) for k, v in fields)
    return ("{" + body + "}\n").encode("utf-8")


def finish(result_fd, done_fd, frame, linger):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass  # the script may have closed or replaced it
    write_all(result_fd, frame)
    # The frame is whole and the output is in the pipe: the init may answer now instead of
    # after this process's exit, whose teardown of a forked interpreter takes milliseconds.
    for fd in (result_fd, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        _write(done_fd, b"D")
        # Tier full: the init kills the jail, answers, and only then reaps it, so that this
        # process's teardown does not delay the answer.
        while linger:
            _pause()
    except BaseException:
        pass
    _exit(0)


def run(result_fd, result_max):
    source = read_input()
    # What the script writes to stderr joins its stdout, in order.
    os.dup2(1, 2)
    code = compile_script(source)
    module = load_module(code, source.decode("utf-8", "replace"))
    main = find_main(module)
    value = call_main(main)
    return b'{"status":"ok"}\n' + encode_result(value, result_max)


def set_dumpable(flag):
    """PR_SET_DUMPABLE: a process that is not dumpable has its /proc files closed to all but
    root. The runner never goes on without the state it asked for."""
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(4, int(flag), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except Exception:
        os._exit(70)


def one_arena():
    """One malloc arena for every thread, as Python's own allocator has one. glibc gives each
    thread that allocates an arena of its own, 64 MiB of address space that RLIMIT_AS counts:
    five threads took 360 of a run's 512 MB, and a sixth could not start."""
    import ctypes

    ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


def become_init(status_fd, output_caps, restricted):
    """Splits off the process that runs the script. The jail's first process is, in tier full,
    the pid namespace's init: the kernel drops signals it has no handler for, and every other
    process dies with it. So it only reaps, relays the script's output, reports how the
    script's process ended on status_fd, and leaves; a script then sees ordinary signal
    behaviour and cannot reach status_fd. (In the restricted tier there is no pid namespace;
    the server kills every process of the run's uid instead.)

    The script's stdout is a pipe of the jail's own uid, relayed to the server's: the server's
    pipe belongs to root, so the script could not reopen it through /dev/stdout."""
    out_r, out_w = os.pipe()
    # The script's process says "D" here once its frame is written and it is about to exit.
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    # Set before the fork, so that a child that ends at once still wakes the relay.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    # Before the fork: else the script's children could open /proc/<init>/mem in the moment
    # before the init gets to it (the script cannot open /proc/1/fd/* nor /proc/1/mem).
    set_dumpable(False)
    child = os.fork()
    if child == 0:
        if not restricted:
            # Inside its pid namespace the script's process may be dumpable, as on a host. In
            # the restricted tier any process of the same uid could open its /proc/<pid>/mem:
            # not dumpable, it is closed to all but root.
            set_dumpable(True)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # As a fresh interpreter has it (a zygote's init has the default).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (status_fd, out_r, wake_r, wake_w, done_r):
            os.close(fd)
        os.dup2(out_w, 1)
        os.close(out_w)
        return done_w
    os.close(out_w)
    os.close(done_w)
    keep = sorted((1, out_r, status_fd, wake_r, wake_w, done_r))
    os.closerange(0, keep[0])
    for low, high in zip(keep, keep[1:] + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]):
        os.closerange(low + 1, high)
    code, done = relay_until_exit(child, out_r, wake_r, done_r)
    try:
        records = b""
        # With no output/ when the script is done, the report comes first and the jail's end
        # (with the start of its teardown) after it: files made later are not collected.
        if code == 0 and not restricted and not (done and not os.path.lexists("output")):
            end_jail(reap=not done)
            records = collect_output(output_caps)
        write_all(status_fd, b"%d %d\n" % (code, len(records)) + records)
    finally:
        # Killed processes count against the process quota all runs share until their
        # teardown ends and they are reaped: neither is left to the lowest priority
        # (SCHED_IDLE), which a busy run, in the scheduling group all runs share, starves.
        if done and not restricted:
            end_jail(reap=True)
        os._exit(code)


def relay_until_exit(child, out_r, wake_r, done_r):
    """Copies the script's output to fd 1 and reaps every child until `child` is gone or says
    on done_r that it wrote its frame and is exiting; then copies what its output pipe still
    holds and returns the child's exit code (128 + signal when killed, 0 when it said so) and
    whether it said so."""
    import select

    code = None
    done = False
    open_out = True
    sink = [1]  # emptied when the server no longer reads: the output is then dropped

    def copy(data):
        if sink:
            try:
                write_all(1, data)
            except OSError:
                sink.clear()

    watch = [out_r, wake_r, done_r]
    while code is None:
        ready = select.select(watch, [], [])[0]
        if done_r in ready:
            # Only the runner's finish() writes it, after the frame; a script that writes it
            # early only ends its own run, without a frame.
            if os.read(done_r, 1) == b"D":
                code, done = 0, True
                break
            watch.remove(done_r)
        if out_r in ready:
            data = os.read(out_r, 1 << 16)
            if data:
                copy(data)
            else:
                open_out = False
                watch.remove(out_r)
        if wake_r in ready:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
        while code is None:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 70, False
            if pid == 0:
                break
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
    # What the script wrote before it ended is in the pipe; a process it left behind may keep
    # writing, so take at most 1 MiB more.
    os.set_blocking(out_r, False)
    left = 1 << 20
    while open_out and left > 0:
        try:
            data = os.read(out_r, 1 << 16)
        except BlockingIOError:
            break
        if not data:
            break
        copy(data)
        left -= len(data)
    return code, done


def end_jail(reap):
    """Tier full, in the pid namespace's init: kills every other process of the jail (kill(-1)
    spares the caller), so that nothing writes under output/ any more, and with reap waits for
    them all. Once the script's process said it is done they are not waited for: their
    teardown (milliseconds for a forked interpreter) runs beside the walk and the answer. A
    stop would not do: kill(-1) reaches them one after another, and one not reached yet may
    wake (SIGCONT) one already stopped; a killed process never runs its code again."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass  # none left to signal
        if not reap:
            return
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


class OutputCap(Exception):
    pass


OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def collect_output(caps):
    """The records (src/files.h) of the regular files under ./output. Nothing but directories
    and regular files is opened, never through a link and never blocking; a cap ends the walk
    with an "L" record."""
    out = []
    state = {"files": 0, "bytes": 0}
    try:
        fd = os.open("output", OPEN_FLAGS | os.O_DIRECTORY)
    except OSError:
        return b""
    try:
        walk_output(fd, b"", 0, caps, state, out)
    except OutputCap as cap:
        out.append(b"L %s\n" % cap.args[0])
    finally:
        os.close(fd)
    return b"".join(out)


def walk_output(dfd, prefix, depth, caps, state, out):
    import stat

    files_max, bytes_max, path_max, depth_max = caps
    for name in sorted(os.fsencode(n) for n in os.listdir(dfd)):
        path = prefix + b"/" + name if prefix else name
        try:
            ls = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(ls.st_mode)
        if not (is_dir or stat.S_ISREG(ls.st_mode)):
            continue  # a link, FIFO, socket or device: never opened
        if depth + 1 > depth_max:
            raise OutputCap(b"depth")
        if len(path) > path_max:
            raise OutputCap(b"path")
        try:
            fd = os.open(name, OPEN_FLAGS | (os.O_DIRECTORY if is_dir else 0), dir_fd=dfd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_dev) != (ls.st_ino, ls.st_dev):
                continue  # swapped since it was looked at
            if stat.S_ISDIR(st.st_mode):
                walk_output(fd, path, depth + 1, caps, state, out)
            elif stat.S_ISREG(st.st_mode):
                if state["files"] + 1 > files_max:
                    raise OutputCap(b"files")
                if st.st_size > bytes_max - state["bytes"]:
                    raise OutputCap(b"bytes")
                data = read_at_most(fd, st.st_size)
                state["files"] += 1
                state["bytes"] += len(data)
                out.append(b"F %d %d\n" % (len(path), len(data)) + path + data)
        finally:
            os.close(fd)


def read_at_most(fd, size):
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# First calls that set up lazy state (BLAS buffers, pandas' groupby machinery): done once in a
# ready jail before it waits, instead of in every script.
WARMUPS = {
    "numpy": "import numpy\nnumpy.ones((64, 64)) @ numpy.ones((64, 64))\n",
    "pandas": "import pandas\npandas.DataFrame({'k': [1, 1, 2], 'v': [1, 2, 3]}).groupby('k')['v'].sum()\n",
}


# Only the runner's own steps are warmed in each run: pandas' warm-up there halved a pandas
# script's time with a pause between calls (8.4 -> 5 ms) but cost every run about 6 ms of CPU
# and 3 MiB, a third of the throughput under load, for trivial and pandas scripts alike.
WARM_SCRIPT = "def main():\n    return {'ok': [1, 2.5, None, True, 'x']}\n"


def warm_up(result_max):
    """Runs the runner's own steps once on a script of its own before the script's process says
    READY. A fork shares the zygote's pages until it writes them, and Python writes (reference
    counts) every object it touches: this copies the pages the runner needs while the run
    waits in the pool, instead of while a request waits for it. Nothing of it stays."""
    try:
        code = compile_script(WARM_SCRIPT)
        encode_result(call_main(find_main(load_module(code, WARM_SCRIPT))), result_max)
    except ScriptError:
        pass
    finally:
        sys.modules.pop(MODULE_NAME, None)
        linecache.cache.pop(FILENAME, None)


def preload(names):
    import importlib

    for name in filter(None, names.split(",")):
        try:
            importlib.import_module(name)
            if name in WARMUPS:
                exec(WARMUPS[name], {})
        except Exception as exc:  # the script will see the same error if it imports it
            print(f"pyexec runner: preloading {name} failed: {exc}", file=sys.stderr)


def start():
    result_fd, status_fd, result_max = (int(a) for a in sys.argv[1:4])
    caps = sys.argv[5] if len(sys.argv) > 5 else "0,0,0,0"
    output_caps = tuple(int(a) for a in caps.split(","))
    restricted = len(sys.argv) > 6 and sys.argv[6] == "restricted"
    one_arena()
    # Imported before the split, the preloaded modules' pages are shared with the init, so
    # the script's process has less of its own to free when it exits.
    preload(sys.argv[4] if len(sys.argv) > 4 else "")
    serve(result_fd, status_fd, result_max, output_caps, restricted)


def serve(result_fd, status_fd, result_max, output_caps, restricted):
    """Steps 1 to 4 of the protocol, once this process is the jail's first."""
    if not restricted:
        # Root made the jail's user namespace, so the signals a run queues count against
        # root's quota on the host too (nsjail has no option for this one).
        resource.setrlimit(resource.RLIMIT_SIGPENDING, (SIGPENDING_MAX, SIGPENDING_MAX))
    serve_script(result_fd, become_init(status_fd, output_caps, restricted), result_max,
                 not restricted)


def serve_script(result_fd, done_fd, result_max, linger):
    """Steps 1 to 3, in the script's process: runner/zygote.py calls it in each run it forks,
    whose init (init/runinit.c) reads done_fd. With linger, the process waits to be killed
    once its frame is written (tier full: its init ends the jail)."""
    done_fd = hide_fd(done_fd, 1)
    result_fd = hide_fd(result_fd)
    warm_up(result_max)
    write_all(result_fd, b"READY\n")
    pid = os.getpid()
    # Address space kept back for the report after a MemoryError (RLIMIT_AS counts it);
    # never touched, so it costs the run no page.
    ballast = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE)
    try:
        frame = run(result_fd, result_max)
    except BaseException as exc:
        if os.getpid() != pid:
            _exit(1)  # a forked child failed, as an uncaught exception would end it
        # Checked before anything is allocated: a script may have left the runner no memory
        # at all, not even for its ScriptError (a MemoryError then comes in its place).
        if isinstance(exc, MemoryError) or (isinstance(exc, ScriptError)
                                            and exc.code == "memory_limit"):
            # Drop everything the script held (its traceback keeps its frames alive).
            exc = None
            try:
                ballast.close()
            except Exception:  # the script reached it and keeps a view of it (or replaced it)
                pass
            sys.modules.pop(MODULE_NAME, None)
            gc.collect()
            err = ScriptError("memory_limit", "out of memory")
        else:
            err = exc if isinstance(exc, ScriptError) else ScriptError(
                "exception", f"Running the script failed: {exc_text(exc)}.", exc)
        frame = error_frame(err)
    if os.getpid() != pid:
        _exit(0)  # a forked child came back: only the original process reports
    finish(result_fd, done_fd, frame, linger)


if __name__ == "__main__":
    start()
