"""`mailflow check` and `mailflow test` (docs/reference/command-line.md): output, exit codes, and that the dry run
does nothing.
"""

import json
import re

import pytest

from smtpclient import mailflow

MESSAGE = (
    "From: Shop <billing@shop.example>\r\n"
    "To: bob@example.org\r\n"
    "Subject: Your invoice 42\r\n"
    "List-Unsubscribe: <mailto:unsub@shop.example>\r\n"
    "X-Junk: 1\r\n"
    "\r\n"
    "Invoice attached.\r\n"
)

FILTER = """\
// sorts invoices
fn rcpt_to(ctx) {
    if ctx.rcpt == "nobody@example.org" { return reject("5.1.1 no such user"); }
    if ctx.rcpt == "later@example.org" { return tempfail(452, "4.2.2 full"); }
    if ctx.rcpt == "team@example.org" { ctx.add_rcpt("carol@example.org"); }
    log("ok " + ctx.rcpt + " after " + ctx.recipients.len());
}

fn data(ctx, msg) {
    if msg.subject.contains("invoice") {
        log("invoice from " + msg.from);
        msg.file_into("Invoices");
        msg.remove_header("X-Junk");
        msg.set_subject("[invoice] " + msg.subject);
        msg.add_header("X-Sorted", "invoices");
        msg.flag("\\\\Flagged");
        return accept();
    }
}
"""


@pytest.fixture
def project(tmp_path):
    """A config + scripts folder; returns a function that writes scripts and the config path."""
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text('[smtp]\nlocal_domains = ["example.org"]\n\n[scripts]\ndir = "scripts"\n')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "msg.eml").write_bytes(MESSAGE.encode())

    def write(scripts):
        for name, text in scripts.items():
            p = tmp_path / "scripts" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        return cfg

    return write


# --- check ----------------------------------------------------------------------------------


def test_check_ok_lists_the_scripts(project, tmp_path):
    cfg = project({"20-b.rhai": FILTER, "10-a.rhai": "fn helo(ctx) { }\n", "lib/x.rhai": "fn f() { 1 }\n",
                   "notes.txt": "not a script"})
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ")
    # In file-name order, modules and other files not listed.
    assert r.stdout.rstrip().endswith("2 script(s) in " + str(tmp_path / "scripts") + ": 10-a.rhai, 20-b.rhai")


def test_check_prints_file_line_col_for_each_error(project, tmp_path):
    cfg = project({
        "10-ok.rhai": FILTER,
        "20-syntax.rhai": "fn data(ctx, msg) {\n    let x = ;\n}\n",
        "30-arity.rhai": "// wrong arity\n\nfn data(ctx) { }\n",
        "40-unclosed.rhai": "fn helo(ctx) {\n    if true {\n",
        "50-import.rhai": 'import "lib/missing" as m;\nfn helo(ctx) { }\n',
    })
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    scripts = str(tmp_path / "scripts")
    assert len(lines) == 4, lines
    assert lines[0] == f"{scripts}/20-syntax.rhai:2:13: Unexpected ';'"
    assert lines[1] == f"{scripts}/30-arity.rhai:3:1: fn data() must take (ctx, msg), it takes 1 parameter(s)"
    assert re.fullmatch(re.escape(f"{scripts}/40-unclosed.rhai:") + r"\d+:\d+: .+", lines[2])
    assert re.fullmatch(re.escape(f"{scripts}/50-import.rhai:1:") + r"\d+: Module not found: lib/missing.*",
                        lines[3])
    assert r.stdout == ""


def test_check_reports_module_errors_in_the_module(project, tmp_path):
    cfg = project({
        "10-a.rhai": 'import "lib/m" as m;\nfn helo(ctx) { m::f() }\n',
        "lib/m.rhai": "fn f() {\n  1 +\n}\n",
    })
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 1
    assert re.match(re.escape(str(tmp_path / "scripts" / "lib" / "m.rhai")) + r":3:\d+: ", r.stderr), r.stderr


def test_check_explain_says_which_functions_run_natively_and_why_not(project, tmp_path):
    cfg = project({
        "10-gate.rhai": (
            "fn connect(ctx) {\n"
            '    if ctx.remote_ip.starts_with("192.0.2.") { return reject(); }\n'
            "}\n"
            "\n"
            "fn data(ctx, msg) {\n"
            '    for h in msg.headers("Received") {\n'
            "        log(h);\n"
            "    }\n"
            "}\n"
        ),
        "20-seen.rhai": 'fn rcpt_to(ctx) {\n    log("rcpt");\n    if kv::get(ctx.rcpt) == () { return; }\n}\n',
        "30-top.rhai": "let limit = 3;\nfn helo(ctx) { if ctx.helo == \"\" { reject() } }\n",
    })
    cfg.write_text(cfg.read_text() + '\n[plugins]\nenabled = ["kv"]\n')
    plain = mailflow("check", "--config", cfg)
    assert plain.returncode == 0, plain.stderr
    assert "native" not in plain.stdout
    r = mailflow("check", "--explain", "--config", cfg)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == plain.stdout.rstrip()
    assert lines[1:] == [
        "10-gate.rhai:1: fn connect: native",
        "10-gate.rhai:5: fn data: rhai: line 6: `for` loop",
        "20-seen.rhai:1: fn rcpt_to: rhai: line 3: call to plugin or module function kv::get",
        "30-top.rhai:2: fn helo: rhai: line 1: top-level statements in the file (they run before every call)",
    ]


def test_check_explain_names_the_max_operations_bound(project, tmp_path):
    cfg = project({"10-gate.rhai": 'fn connect(ctx) {\n    if ctx.remote_ip == "192.0.2.7" { return reject(); }\n}\n'})
    r = mailflow("check", "--explain", "--config", cfg)
    assert r.stdout.splitlines()[1:] == ["10-gate.rhai:1: fn connect: native"], r.stdout
    cfg.write_text(cfg.read_text() + "max_operations = 10\n")
    r = mailflow("check", "--explain", "--config", cfg)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[1]
    assert re.fullmatch(r"10-gate\.rhai:1: fn connect: rhai: max_operations bound: up to \d+ operations, "
                        r"max_operations is 10", line), line


def test_check_config_errors(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text("[scripts]\ntimeout_msec = 5\n")
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 1
    assert "timeout_msec" in r.stderr
    assert re.search(r"mailflow\.toml:2:\d+: ", r.stderr), r.stderr
    cfg.write_text('[scripts]\non_error = "explode"\n')
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 1
    assert "explode" in r.stderr or "on_error" in r.stderr


def test_check_missing_scripts_folder_is_an_empty_set(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text('[scripts]\ndir = "nowhere"\n')
    r = mailflow("check", "--config", cfg)
    assert r.returncode == 0
    assert "0 script(s)" in r.stdout


def test_check_without_config_uses_defaults(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "10-a.rhai").write_text("fn helo(ctx) { }\n")
    r = mailflow("check", cwd=tmp_path)
    assert r.returncode == 0
    assert "built-in defaults" in r.stdout and "10-a.rhai" in r.stdout


def test_config_flag_before_or_after_the_subcommand(project, tmp_path):
    cfg = project({"10-a.rhai": FILTER})
    a = mailflow("--config", cfg, "test", "--stage", "data", tmp_path / "msg.eml")
    b = mailflow("test", "--stage", "data", tmp_path / "msg.eml", "--config", cfg)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


# --- test: text -----------------------------------------------------------------------------


def test_test_data_text_output(project, tmp_path):
    cfg = project({"10-filter.rhai": FILTER})
    r = mailflow("test", "--config", cfg, "--stage", "data", "--from", "billing@shop.example",
                 "--to", "bob@example.org", tmp_path / "msg.eml")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "stage: data"
    assert out[1] == "verdict: accept (by 10-filter.rhai)"
    assert out[2:7] == [
        'action: file_into("Invoices")',
        'action: remove_header("X-Junk")',
        'action: set_subject("[invoice] Your invoice 42")',
        'action: add_header("X-Sorted", "invoices")',
        'action: flag("\\\\Flagged")',
    ]
    assert "log: 10-filter.rhai: invoice from billing@shop.example" in out
    assert "recipients: bob@example.org" in out
    assert "subject: [invoice] Your invoice 42" in out
    headers = out[out.index("headers:") + 1:]
    assert "  X-Sorted: invoices" in headers
    assert "  Subject: [invoice] Your invoice 42" in headers
    assert not any(h.startswith("  X-Junk") for h in headers)


def test_test_default_verdict_when_no_script_decides(project, tmp_path):
    cfg = project({"10-a.rhai": "fn data(ctx, msg) { }\n"})
    (tmp_path / "plain.eml").write_text("Subject: hi\r\n\r\nx\r\n")
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "plain.eml")
    assert r.returncode == 0
    assert "verdict: accept (default: no script decided)" in r.stdout
    assert "action:" not in r.stdout


def test_test_rcpt_to_runs_once_per_recipient(project, tmp_path):
    cfg = project({"10-filter.rhai": FILTER})
    r = mailflow("test", "--config", cfg, "--stage", "rcpt_to", "--from", "a@remote.example",
                 "--to", "bob@example.org", "--to", "nobody@example.org", "--to", "later@example.org",
                 "--to", "team@example.org", tmp_path / "msg.eml")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    i = out.index("rcpt: nobody@example.org")
    assert out[i + 1] == "verdict: reject 550 5.1.1 no such user (by 10-filter.rhai)"
    i = out.index("rcpt: later@example.org")
    assert out[i + 1] == "verdict: tempfail 452 4.2.2 full (by 10-filter.rhai)"
    i = out.index("rcpt: team@example.org")
    assert out[i + 1] == "verdict: accept (default: no script decided)"
    assert out[i + 2] == 'action: add_rcpt("carol@example.org")'
    # ctx.recipients holds the recipients accepted so far, as in a real session.
    assert "log: 10-filter.rhai: ok team@example.org after 1" in out
    # Refused recipients are not in the envelope; added ones are.
    assert "recipients: bob@example.org, team@example.org, carol@example.org" in out


def test_test_connect_helo_mail_from_stages(project, tmp_path):
    cfg = project({"10-gate.rhai": """
        fn connect(ctx) {
            if ctx.remote_ip == "192.0.2.7" { return reject("blocked"); }
            if ctx.remote_ip == "192.0.2.9" { return tempfail("busy"); }
        }
        fn helo(ctx) { if ctx.helo == "localhost" { return reject(550, "5.7.1 fake helo"); } }
        fn mail_from(ctx) { if ctx.sender == "" { return tempfail(); } }
    """})
    eml = tmp_path / "msg.eml"
    r = mailflow("test", "--config", cfg, "--stage", "connect", "--remote-ip", "192.0.2.7", eml)
    assert "verdict: reject 554 5.7.1 blocked (by 10-gate.rhai)" in r.stdout
    r = mailflow("test", "--config", cfg, "--stage", "connect", "--remote-ip", "192.0.2.8", eml)
    assert "verdict: accept (default: no script decided)" in r.stdout
    # As the daemon answers: a tempfail at connect is 421 and the connection closes.
    r = mailflow("test", "--config", cfg, "--stage", "connect", "--remote-ip", "192.0.2.9", eml)
    assert "verdict: tempfail 421 4.7.1 busy (and the connection is closed) (by 10-gate.rhai)" in r.stdout, r.stdout
    r = mailflow("test", "--config", cfg, "--stage", "helo", "--helo", "localhost", eml)
    assert "verdict: reject 550 5.7.1 fake helo (by 10-gate.rhai)" in r.stdout
    r = mailflow("test", "--config", cfg, "--stage", "mail_from", eml)
    assert re.search(r"verdict: tempfail 451 4\.7\.1 .+ \(by 10-gate\.rhai\)", r.stdout), r.stdout
    assert r.returncode == 0


def test_test_fetched_stage(project, tmp_path):
    cfg = project({"10-fetch.rhai": """
        fn fetched(ctx, msg) {
            log(ctx.protocol + " " + ctx.mailbox + " " + msg.flags.len());
            msg.flag("\\\\Seen");
            msg.delete();
        }
    """})
    r = mailflow("test", "--config", cfg, "--stage", "fetched", tmp_path / "msg.eml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "log: 10-fetch.rhai: imap INBOX 0" in r.stdout
    assert 'action: flag("\\\\Seen")' in r.stdout
    assert "action: delete()" in r.stdout


def test_test_script_error_exits_1_with_file_line_col(project, tmp_path):
    cfg = project({"10-a.rhai": "fn data(ctx, msg) {\n    msg.set_subject(\"x\");\n    throw \"nope\";\n}\n"})
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "msg.eml")
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert out[1] == "verdict: tempfail 451 4.3.0 Temporary local problem in script 10-a.rhai, try again later (by 10-a.rhai)"
    assert out[2].startswith("error: 10-a.rhai:3:5: ") and "nope" in out[2]
    # The failing stage's actions are dropped, as in the daemon.
    assert "action:" not in r.stdout


def test_test_compile_error_exits_1(project, tmp_path):
    cfg = project({"10-a.rhai": "fn data(ctx, msg) {\n"})
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "msg.eml")
    assert r.returncode == 1
    assert re.search(r"10-a\.rhai:\d+:\d+: ", r.stderr)


def test_test_usage_errors_exit_2(project, tmp_path):
    cfg = project({})
    assert mailflow("test", "--config", cfg, "--stage", "bogus", tmp_path / "msg.eml").returncode == 2
    assert mailflow("test", "--config", cfg, "--stage", "data").returncode == 2
    assert mailflow("test", "--config", cfg, tmp_path / "msg.eml").returncode == 2
    r = mailflow("test", "--config", cfg, "--stage", "data", tmp_path / "missing.eml")
    assert r.returncode == 1 and "missing.eml" in r.stderr


def test_test_does_nothing(project, tmp_path):
    cfg = project({"10-a.rhai": """
        fn data(ctx, msg) {
            msg.file_into("X"); msg.forward("a@remote.example"); msg.redirect("b@remote.example");
            msg.reply(#{ body: "hi" }); msg.vacation(#{ body: "away" });
            ctx.add_rcpt("c@example.org");
        }
    """})
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = mailflow("test", "--config", cfg, "--stage", "data", "--to", "bob@example.org", tmp_path / "msg.eml")
    assert r.returncode == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "msg.eml").read_bytes() == MESSAGE.encode()
    for name in ["file_into", "forward", "redirect", "reply", "vacation", "add_rcpt"]:
        assert f"action: {name}(" in r.stdout


# --- test: JSON -----------------------------------------------------------------------------


def test_test_json(project, tmp_path):
    cfg = project({"10-filter.rhai": FILTER})
    r = mailflow("test", "--config", cfg, "--stage", "data", "--json", "--from", "billing@shop.example",
                 "--to", "bob@example.org", tmp_path / "msg.eml")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["stage"] == "data"
    [run] = report["runs"]
    assert run["verdict"] == "accept"
    assert run["decided_by"] == "10-filter.rhai"
    assert run["error"] is None
    assert run["actions"] == [
        {"action": "file_into", "folder": "Invoices"},
        {"action": "remove_header", "name": "X-Junk"},
        {"action": "set_subject", "text": "[invoice] Your invoice 42"},
        {"action": "add_header", "name": "X-Sorted", "value": "invoices"},
        {"action": "flag", "flag": "\\Flagged"},
    ]
    assert run["logs"] == ["10-filter.rhai: invoice from billing@shop.example"]
    assert report["recipients"] == ["bob@example.org"]
    assert report["subject"] == "[invoice] Your invoice 42"
    assert ["X-Sorted", "invoices"] in report["headers"]
    assert not any(name == "X-Junk" for name, _ in report["headers"])


def test_test_json_refusal_and_error(project, tmp_path):
    cfg = project({"10-filter.rhai": FILTER, "20-err.rhai": "fn helo(ctx) {\n  let a = [];\n  a[3]\n}\n"})
    r = mailflow("test", "--config", cfg, "--stage", "rcpt_to", "--json", "--to", "nobody@example.org",
                 tmp_path / "msg.eml")
    report = json.loads(r.stdout)
    [run] = report["runs"]
    assert run["rcpt"] == "nobody@example.org"
    assert run["verdict"] == "reject"
    assert run["reply"] == "550 5.1.1 no such user"
    assert report["recipients"] == []
    r = mailflow("test", "--config", cfg, "--stage", "helo", "--json", tmp_path / "msg.eml")
    assert r.returncode == 1
    [run] = json.loads(r.stdout)["runs"]
    assert run["verdict"] == "tempfail"
    assert run["error"].startswith("20-err.rhai:3:")


def test_test_reply_preview_knows_the_daemons_own_addresses(project, tmp_path):
    """The preview applies the daemon's own-address rule: mail from postmaster@<hostname> is
    never answered (a real daemon suppresses it too)."""
    cfg = project({"10-reply.rhai": 'fn data(ctx, msg) { msg.reply(#{ body: "Got it." }); }\n'})
    cfg.write_text('[smtp]\nhostname = "mx.example.org"\nlocal_domains = ["example.org"]\n\n[scripts]\ndir = "scripts"\n')
    eml = tmp_path / "plain.eml"
    for sender, expected in (
        ("postmaster@mx.example.org", "reply: suppressed: the sender postmaster@mx.example.org is this daemon's own address"),
        ("carol@elsewhere.example", "reply: would be sent to <carol@elsewhere.example> from <>"),
    ):
        eml.write_bytes(f"From: {sender}\r\nTo: bob@example.org\r\nSubject: hello\r\n\r\nHi.\r\n".encode())
        r = mailflow("test", "--config", cfg, "--stage", "data", "--from", sender, "--to", "bob@example.org", eml)
        assert r.returncode == 0, r.stdout + r.stderr
        assert expected in r.stdout, r.stdout


def test_test_sets_the_context_a_stage_would_see(project, tmp_path):
    """--tls / --auth-user for SMTP stages; --account / --protocol / --mailbox / --uid / --flag
    for `fetched`, so rules on them can be tried before the daemon runs them."""
    cfg = project({"10-ctx.rhai": """
        fn mail_from(ctx) { log("tls=" + ctx.tls + " user=" + ctx.auth_user); }
        fn fetched(ctx, msg) {
            log(ctx.account + " " + ctx.protocol + " " + ctx.mailbox + " uid=" + ctx.uid + " flags=" + msg.flags);
            if "\\\\Flagged" in msg.flags { msg.file_into("Starred"); }
        }
    """})
    eml = tmp_path / "msg.eml"
    r = mailflow("test", "--config", cfg, "--stage", "mail_from", "--tls", "--auth-user", "me", eml)
    assert "tls=true user=me" in r.stdout, r.stdout
    r = mailflow("test", "--config", cfg, "--stage", "fetched", "--account", "work", "--protocol", "pop3",
                 "--mailbox", "Archive", "--uid", "42", "--flag", "\\Flagged", "--flag", "\\Seen", eml)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'work pop3 Archive uid=42 flags=["\\\\Flagged", "\\\\Seen"]' in r.stdout, r.stdout
    assert 'action: file_into("Starred")' in r.stdout, r.stdout
    r = mailflow("test", "--config", cfg, "--stage", "fetched", "--protocol", "smtp", eml)
    assert r.returncode == 2, r.stderr
