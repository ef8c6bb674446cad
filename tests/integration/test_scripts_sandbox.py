"""The script sandbox (docs/scripting.md "Limits", issue #3 "Sandbox", "Modules"): runaway scripts are
stopped within the limit while other sessions keep being served, runtime errors tempfail and
are logged with file and line, `eval` is off, modules stay inside the scripts folder, and no
file, process, network or environment function exists.
"""

import re
import threading
import time

import pytest

from conftest import wait_for
from smtpclient import SMTP, make_message, mailflow, parse, transaction, wait_delivered, wait_log

TIMEOUT_MS = 300
# Operations high enough that only the wall-clock limit can stop `loop {}`.
TIME_LIMITED = f"[scripts]\ntimeout_ms = {TIMEOUT_MS}\nmax_operations = 1000000000000\n"

RUNAWAY = """
fn data(ctx, msg) {
    if msg.subject == "loop" {
        loop {}
    }
    msg.add_header("X-Ok", "yes");
}
"""


def timed_transaction(port, subject, results, key):
    start = time.monotonic()
    out = transaction(port, "a@remote.example", ["bob@example.org"], make_message(subject=subject))
    results[key] = (out, start, time.monotonic())


# Logged (at debug, by this module) when a hook has run past its inline leash and is moved to
# a thread of its own, where it spins until the limit stops it.
LEASH_TARGET = "mailflow::script::runner"
OUTRAN_LEASH = "hook outran its inline leash"


def test_runaway_loop_tempfails_within_timeout_and_others_are_served(daemon):
    d = daemon(scripts={"10-loop.rhai": RUNAWAY}, extra=TIME_LIMITED, start=False)
    d.start(env={"RUST_LOG": f"info,{LEASH_TARGET}=debug"})
    results = {}
    runaways = [
        threading.Thread(target=timed_transaction, args=(d.port, "loop", results, f"loop{i}")) for i in range(3)
    ]
    for t in runaways:
        t.start()
    # Every runaway hook is spinning on a thread of its own now: the daemon said so.
    assert wait_for(lambda: d.log().count(OUTRAN_LEASH) >= 3, timeout=TIMEOUT_MS / 1000), d.log()
    assert all(t.is_alive() for t in runaways)
    timed_transaction(d.port, "ok", results, "ok")
    # ... and still were when the normal session had its 250.
    assert not any(f"loop{i}" in results for i in range(3))
    for t in runaways:
        t.join(timeout=10)
    ok, ok_start, ok_end = results["ok"]
    assert ok["data"].code == 250
    # The normal session was served while the runaways were still spinning.
    assert ok_end - ok_start < TIMEOUT_MS / 1000
    for i in range(3):
        out, start, end = results[f"loop{i}"]
        assert out["data"].code == 451, out
        assert out["data"].lines[0].startswith("4.3.0")
        assert end > ok_end
        assert end - start < TIMEOUT_MS / 1000 + 1.0
    log = wait_log(d, "timed out after 300 ms")
    # Line 3 col 1 = `fn data` (the text starts with a newline): `loop {}` has no position of
    # its own, so the error points at the stage function.
    assert re.search(r"10-loop\.rhai:\d+:\d+: timed out after 300 ms \(timeout_ms\)", log)
    files = wait_delivered(d, "bob@example.org")
    assert [parse(f)["X-Ok"] for f in files] == ["yes"]
    assert d.proc.poll() is None


def test_runaway_at_rcpt_to_and_session_goes_on(daemon):
    d = daemon(
        scripts={"10-loop.rhai": """
            fn rcpt_to(ctx) {
                if ctx.rcpt == "loop@example.org" { while true { } }
            }
        """},
        extra=TIME_LIMITED,
    )
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@remote.example>")
        start = time.monotonic()
        r = c.cmd("RCPT TO:<loop@example.org>")
        elapsed = time.monotonic() - start
        assert r.code == 451
        assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < TIMEOUT_MS / 1000 + 1.0
        # Same session, next recipient: fine.
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        _, r = c.data(make_message())
        assert r.code == 250
    assert wait_delivered(d, "bob@example.org")


def test_operation_limit(daemon):
    d = daemon(
        scripts={"10-ops.rhai": """
            fn mail_from(ctx) {
                let n = 0;
                while n < 100000 { n += 1; }
            }
        """},
        extra="[scripts]\nmax_operations = 5000\n",
    )
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@remote.example>").code == 451
    log = wait_log(d, "max_operations")
    assert re.search(r"10-ops\.rhai:\d+:\d+: exceeded 5000 operations \(max_operations\)", log), log


def test_runtime_error_tempfails_and_names_file_and_line(daemon):
    d = daemon(scripts={"10-ok.rhai": "fn data(ctx, msg) { }\n", "20-err.rhai": """\
        // line 1
        fn data(ctx, msg) {
            let parts = msg.subject.split(" ");
            let n = parts[5];
        }
    """})
    out = transaction(d.port, "a@remote.example", ["bob@example.org"], make_message(subject="two words"))
    assert out["data"].code == 451
    assert out["data"].lines == ["4.3.0 Temporary local problem in script 20-err.rhai, try again later"]
    log = wait_log(d, "20-err.rhai:4:")
    line = [l for l in log.splitlines() if "20-err.rhai:4:" in l][0]
    assert "stage=data" in line
    assert "out of bounds" in line
    assert d.proc.poll() is None


def test_deep_recursion_and_huge_values_are_stopped(daemon):
    d = daemon(scripts={"10-big.rhai": """
        fn down(n) { down(n + 1) }
        fn data(ctx, msg) {
            if msg.subject == "recurse" { down(0); }
            if msg.subject == "string" { let s = "x"; s.pad(50000000, "y"); }
            if msg.subject == "array" { let a = []; a.pad(10000000, 0); }
        }
    """})
    limits = [
        ("recurse", "Stack overflow"),  # rhai's words for the call-depth limit (max_call_levels)
        ("string", "Length of string too large"),
        ("array", "Size of array/BLOB too large"),
    ]
    for subject, needle in limits:
        before = len(d.log())
        out = transaction(d.port, "a@remote.example", ["bob@example.org"], make_message(subject=subject))
        assert out["data"].code == 451, subject
        # Any script error gives that 451: the log line of this message names the limit that fired.
        assert wait_for(lambda: "script failed" in d.log()[before:]), d.log()[before:]
        (line,) = [l for l in d.log()[before:].splitlines() if "script failed" in l]
        assert "stage=data" in line, line
        assert re.search(r"error=10-big\.rhai:\d+:\d+: " + re.escape(needle), line), (subject, line)
    assert d.proc.poll() is None
    assert transaction(d.port, "a@remote.example", ["bob@example.org"], make_message())["data"].code == 250


# --- eval, modules, no I/O ------------------------------------------------------------------


def write_config(tmp_path, scripts, extra=""):
    (tmp_path / "scripts").mkdir(exist_ok=True)
    for name, text in scripts.items():
        p = tmp_path / "scripts" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text('[smtp]\nlocal_domains = ["example.org"]\n' + extra)
    return cfg


def test_eval_is_refused_at_compile(tmp_path):
    cfg = write_config(tmp_path, {"10-eval.rhai": 'fn data(ctx, msg) {\n    eval("1 + 1");\n}\n'})
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 1
    assert re.search(r"10-eval\.rhai:2:5: .*'eval'", r.stderr), r.stderr


def test_eval_by_function_pointer_is_refused_at_run(tmp_path):
    cfg = write_config(tmp_path, {"10-eval.rhai": 'fn data(ctx, msg) {\n    let f = Fn("ev" + "al");\n'
                                                  '    log(f.call("40 + 2"));\n}\n'})
    (tmp_path / "m.eml").write_text("Subject: x\r\n\r\nbody\r\n")
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "m.eml")
    assert r.returncode == 1
    assert "verdict: tempfail 451 4.3.0" in r.stdout
    assert "eval" in r.stdout
    assert "log:" not in r.stdout


def test_eval_in_daemon_reload_is_refused(daemon):
    d = daemon(scripts={"10-rule.rhai": 'fn rcpt_to(ctx) { reject("5.7.1 old") }\n'})
    # The watcher is set up before `mailflow running` is logged (which the fixture waited for):
    # no settling time needed. The old rule is live:
    assert transaction(d.port, "a@remote.example", ["bob@example.org"], make_message())["rcpt"][0].lines == ["5.7.1 old"]
    d.write_script("10-rule.rhai", 'fn rcpt_to(ctx) {\n    eval("accept()")\n}\n')
    log = wait_log(d, "10-rule.rhai:2:")
    assert "eval" in log.split("10-rule.rhai:2:")[1].splitlines()[0]
    out = transaction(d.port, "a@remote.example", ["bob@example.org"], make_message())
    assert out["rcpt"][0].code == 550


@pytest.mark.parametrize("path", ["../outside", "lib/../../outside", "/ABS/outside", "./../outside"])
def test_import_outside_the_scripts_folder_is_refused(tmp_path, path):
    # The target exists, so a refusal is the jail, not a missing file.
    (tmp_path / "outside.rhai").write_text('fn secret() { "leaked" }\n')
    path = path.replace("/ABS", str(tmp_path))
    cfg = write_config(tmp_path, {
        "10-imp.rhai": f'// comment\nimport "{path}" as x;\nfn data(ctx, msg) {{ log(x::secret()); }}\n',
        "lib/ok.rhai": "fn f() { 1 }\n",
    })
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 1, r.stdout
    assert re.search(r"10-imp\.rhai:2:\d+: .*modules must be inside the scripts folder", r.stderr), r.stderr


def test_dynamic_import_outside_is_refused_at_run(tmp_path):
    (tmp_path / "outside.rhai").write_text('fn secret() { "leaked" }\n')
    cfg = write_config(tmp_path, {
        "10-imp.rhai": 'fn data(ctx, msg) {\n    let p = "../" + "outside";\n    import p as x;\n'
                       '    log(x::secret());\n}\n',
    })
    (tmp_path / "m.eml").write_text("Subject: x\r\n\r\nbody\r\n")
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "m.eml")
    assert r.returncode == 1
    assert "error: 10-imp.rhai:3:" in r.stdout
    assert "leaked" not in r.stdout


def test_import_inside_the_scripts_folder_works(daemon):
    d = daemon(scripts={
        "10-imp.rhai": """
            import "lib/lists" as lists;
            fn data(ctx, msg) {
                let folder = lists::folder_for(msg);
                if folder != "" { msg.file_into(folder); }
            }
        """,
        # A module may import another one; paths are relative to the scripts folder.
        "lib/lists.rhai": """
            import "lib/names" as names;
            fn folder_for(msg) {
                if msg.has_header("List-Id") { return "Lists/" + names::short(msg.header("List-Id")); }
                ""
            }
        """,
        "lib/names.rhai": """
            fn short(id) { let s = id; s.replace("<", ""); s.split(".")[0] }
        """,
    })
    out = transaction(d.port, "a@remote.example", ["bob@example.org"],
                      make_message(extra="List-Id: <rust.lists.example>\n"))
    assert out["data"].code == 250
    assert len(wait_delivered(d, "bob@example.org", folder="Lists/rust")) == 1


NO_SUCH_FUNCTIONS = [
    'open("/etc/passwd")',
    'read_file("/etc/passwd")',
    'write_file("/tmp/x", "y")',
    'File("/etc/passwd")',
    'fs::read("/etc/passwd")',
    'system("id")',
    'exec("id")',
    'command("id")',
    'spawn("id")',
    'env("HOME")',
    'getenv("HOME")',
    'env::var("HOME")',
    'http_get("http://127.0.0.1/")',
    'tcp_connect("127.0.0.1", 25)',
    'socket("127.0.0.1")',
]


@pytest.mark.parametrize("call", NO_SUCH_FUNCTIONS)
def test_no_file_process_network_or_environment_access(tmp_path, call):
    cfg = write_config(tmp_path, {"10-io.rhai": f"fn data(ctx, msg) {{\n    let r = {call};\n    log(r);\n}}\n"})
    (tmp_path / "m.eml").write_text("Subject: x\r\n\r\nbody\r\n")
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "m.eml")
    assert r.returncode == 1, (call, r.stdout, r.stderr)
    # Either the script does not even compile (a reserved word such as `spawn`), or the call
    # fails at run time because no such function or module exists.
    compile_error = re.search(r"10-io\.rhai:2:\d+: .*(reserved keyword|Undefined module)", r.stderr)
    run_error = re.search(r"error: 10-io\.rhai:2:\d+: (Function not found|Module not found)", r.stdout)
    assert compile_error or run_error, (r.stdout, r.stderr)
    assert "log:" not in r.stdout


def test_the_daemon_survives_every_kind_of_script_failure(daemon):
    d = daemon(scripts={"10-fail.rhai": """
        fn connect(ctx) { if ctx.remote_ip == "127.0.0.9" { throw "connect"; } }
        fn helo(ctx) { if ctx.helo == "x.example" { let a = 1 / 0; } }
        fn mail_from(ctx) { if ctx.sender == "x@remote.example" { return [1][7]; } }
        fn rcpt_to(ctx) { if ctx.rcpt == "x@example.org" { let m = #{}; m.a.b = 1; } }
        fn data(ctx, msg) { if msg.subject == "x" { undefined_fn(); } }
    """})
    with SMTP(d.port, source="127.0.0.9") as c:
        assert c.greeting.code == 421
    with SMTP(d.port) as c:
        assert c.cmd("EHLO x.example").code == 451
        assert c.cmd("EHLO ok.example").code == 250
        assert c.cmd("MAIL FROM:<x@remote.example>").code == 451
        assert c.cmd("MAIL FROM:<ok@remote.example>").code == 250
        assert c.cmd("RCPT TO:<x@example.org>").code == 451
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        _, r = c.data(make_message(subject="x"))
        assert r.code == 451
    assert d.proc.poll() is None
    out = transaction(d.port, "a@remote.example", ["bob@example.org"], make_message(subject="fine"))
    assert out["data"].code == 250
