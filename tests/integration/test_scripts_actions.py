"""Script actions (docs/scripting.md) against the running daemon: the effect of each one on the
delivered file, `discard`, header-injection attempts, and "a failing stage drops its actions".
"""

import re

from conftest import wait_for
from smtpclient import SMTP, all_message_files, make_message, parse, transaction, wait_delivered, wait_log

BOB = "bob@example.org"
SENTINEL = "sentinel@example.org"


def delivered_line(d, queue_id):
    """The deliverer's "message delivered" log line of the message `queue_id`, or None."""
    return next((l for l in d.log().splitlines() if f"id={queue_id}" in l and "message delivered" in l), None)


def send(d, subject="hello", rcpts=(BOB,), extra="", sender="alice@remote.example", body="Hi.\n"):
    return transaction(d.port, sender, list(rcpts), make_message(subject=subject, extra=extra, body=body))


def only_file(d, rcpt=BOB, folder=None):
    files = wait_delivered(d, rcpt, folder=folder)
    assert len(files) == 1, files
    return files[0]


def test_header_edits_in_the_delivered_file(daemon):
    d = daemon(scripts={"10-edit.rhai": """
        fn data(ctx, msg) {
            msg.set_header("X-Spam-Score", "0.5");          // replaces both existing fields
            msg.add_header("X-Filed-By", "mailflow");       // new field in front
            msg.remove_header("X-Tracking");                // every X-Tracking goes
            msg.set_subject("[ext] " + msg.subject);
        }
    """})
    extra = "X-Spam-Score: 9\nX-Tracking: a\nX-Tracking: b\nX-Spam-Score: 10\n"
    out = send(d, subject="quarterly numbers", extra=extra, body="Body line\nX-Tracking: in body stays\n")
    assert out["data"].code == 250
    path = only_file(d)
    m = parse(path)
    assert m["Subject"] == "[ext] quarterly numbers"
    assert m.get_all("X-Spam-Score") == ["0.5"]
    assert m["X-Filed-By"] == "mailflow"
    assert m.get_all("X-Tracking") is None
    raw = path.read_bytes()
    assert b"X-Tracking: in body stays" in raw.split(b"\r\n\r\n", 1)[1]
    # Fields the script did not name are untouched, byte for byte.
    assert b"\r\nMessage-ID: <m1@remote.example>\r\n" in raw
    assert raw.startswith(b"Return-Path: <alice@remote.example>\r\n")


def test_msg_getters_show_the_original_message(daemon):
    d = daemon(scripts={"10-edit.rhai": """
        fn data(ctx, msg) {
            msg.set_subject("changed");
            msg.remove_header("X-Keep");
            msg.add_header("X-Seen-Subject", msg.subject);
            msg.add_header("X-Seen-Keep", msg.header("X-Keep"));
        }
    """})
    send(d, subject="original", extra="X-Keep: kept\n")
    m = parse(only_file(d))
    assert m["Subject"] == "changed"
    assert m["X-Seen-Subject"] == "original"
    assert m["X-Seen-Keep"] == "kept"
    assert m["X-Keep"] is None


def test_non_ascii_subject_is_encoded(daemon):
    d = daemon(scripts={"10-edit.rhai": """
        fn data(ctx, msg) { msg.set_subject("Grüße – [extern]"); }
    """})
    send(d)
    path = only_file(d)
    assert path.read_bytes().isascii() or b"=?UTF-8?" in path.read_bytes()
    assert b"=?UTF-8?B?" in path.read_bytes()
    assert parse(path)["Subject"] == "Grüße – [extern]"


def test_file_into_maildir_plus_plus_folder(daemon):
    d = daemon(scripts={"10-lists.rhai": """
        fn data(ctx, msg) {
            if msg.has_header("List-Id") { msg.file_into("Lists/Rust"); }
        }
    """})
    send(d, subject="list mail", extra="List-Id: <rust.lists.example>\n")
    send(d, subject="personal")
    filed = only_file(d, folder="Lists/Rust")
    assert filed.parent.parent.name == ".Lists.Rust"
    assert (filed.parent.parent / "maildirfolder").exists()
    assert parse(filed)["Subject"] == "list mail"
    inbox = only_file(d)
    assert parse(inbox)["Subject"] == "personal"


def test_file_into_twice_files_a_copy_in_each(daemon):
    d = daemon(scripts={"10-two.rhai": """
        fn data(ctx, msg) { msg.file_into("Invoices"); msg.file_into("Archive/2026"); }
    """})
    send(d)
    assert len(wait_delivered(d, BOB, folder="Invoices")) == 1
    assert len(wait_delivered(d, BOB, folder="Archive/2026")) == 1
    assert d.messages(BOB) == []


def test_flag_and_mark_seen_set_maildir_info(daemon):
    d = daemon(scripts={"10-flags.rhai": """
        fn data(ctx, msg) {
            if msg.subject == "flag" { msg.flag("\\\\Flagged"); msg.mark_seen(); }
            if msg.subject == "seen" { msg.mark_seen(); }
        }
    """})
    send(d, subject="flag")
    send(d, subject="seen")
    send(d, subject="plain")
    files = wait_delivered(d, BOB, count=3)
    by_subject = {parse(f)["Subject"]: f for f in files}
    assert by_subject["flag"].parent.name == "cur"
    assert by_subject["flag"].name.endswith(":2,FS")
    assert by_subject["seen"].name.endswith(":2,S")
    assert by_subject["plain"].parent.name == "new"
    assert ":2," not in by_subject["plain"].name


def test_add_and_remove_recipients(daemon):
    d = daemon(scripts={"10-rcpts.rhai": """
        fn rcpt_to(ctx) {
            if ctx.rcpt == "team@example.org" { ctx.add_rcpt("carol@test.example"); }
        }
        fn data(ctx, msg) {
            ctx.add_rcpt("archive@example.org");
            ctx.remove_rcpt("team@example.org");
        }
    """})
    out = send(d, rcpts=["bob@example.org", "team@example.org"])
    assert out["data"].code == 250
    for rcpt in ["bob@example.org", "carol@test.example", "archive@example.org"]:
        assert len(wait_delivered(d, rcpt)) == 1, rcpt
    assert d.messages("team@example.org") == []


def test_add_rcpt_at_mail_from_is_an_error(daemon):
    d = daemon(scripts={"10-rcpts.rhai": """
        fn mail_from(ctx) { ctx.add_rcpt("x@example.org"); }
    """})
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@remote.example>").code == 451
    assert "only available in the rcpt_to and data stages" in wait_log(d, "only available")


def test_forward_keeps_local_copy_redirect_does_not(daemon):
    d = daemon(scripts={"10-out.rhai": """
        fn data(ctx, msg) {
            if msg.subject == "fwd" { msg.forward("copy@remote.example"); }
            if msg.subject == "redir" { msg.redirect("elsewhere@remote.example"); }
        }
    """})
    assert send(d, subject="fwd")["data"].code == 250
    redir = send(d, subject="redir")["data"]
    assert redir.code == 250
    redir_id = re.match(r"2\.0\.0 Ok: queued as ([0-9A-F]{16})$", redir.lines[-1]).group(1)
    files = wait_delivered(d, BOB)
    assert [parse(f)["Subject"] for f in files] == ["fwd"]
    # Both actions are recorded and logged (how they are sent is the outbound sender's job).
    log = wait_log(d, "elsewhere@remote.example")
    assert "copy@remote.example" in log
    assert "elsewhere@remote.example" in log
    # The redirected message must not arrive locally. Before looking, prove its processing is
    # over: the deliverer logged it as done, and a sentinel accepted after it has been delivered.
    assert wait_for(lambda: delivered_line(d, redir_id)), d.log()
    assert send(d, subject="sentinel", rcpts=[SENTINEL])["data"].code == 250
    assert len(wait_delivered(d, SENTINEL)) == 1
    assert [parse(f)["Subject"] for f in all_message_files(d)] == ["fwd", "sentinel"]
    assert d.messages(BOB) == files


def test_reply_and_vacation_are_recorded_and_mail_delivered(daemon):
    d = daemon(scripts={"10-auto.rhai": """
        fn data(ctx, msg) {
            if msg.subject == "r" { msg.reply(#{ subject: "Re: r", body: "Thanks!" }); }
            if msg.subject == "v" { msg.vacation(#{ days: 3, subject: "Away", body: "Back Monday." }); }
        }
    """})
    assert send(d, subject="r")["data"].code == 250
    assert send(d, subject="v")["data"].code == 250
    assert len(wait_delivered(d, BOB, count=2)) == 2
    log = wait_log(d, "vacation")
    assert "reply" in log and "vacation" in log


def test_bad_action_arguments_are_script_errors(daemon):
    d = daemon(scripts={"10-bad.rhai": """
        fn data(ctx, msg) {
            switch msg.subject {
                "reply-no-body" => msg.reply(#{ subject: "x" }),
                "reply-unknown" => msg.reply(#{ body: "x", cc: "a@b.example" }),
                "vacation-days" => msg.vacation(#{ days: 0, body: "x" }),
                "forward-bad" => msg.forward("not an address"),
                "folder-dotdot" => msg.file_into("../../etc"),
                "folder-abs" => msg.file_into("/tmp/x"),
                "flag-bad" => msg.flag("\\\\Fl agged"),
                _ => ()
            }
        }
    """})
    for subject in ["reply-no-body", "reply-unknown", "vacation-days", "forward-bad", "folder-dotdot",
                    "folder-abs", "flag-bad"]:
        out = send(d, subject=subject)
        assert out["data"].code == 451, subject
    assert send(d, subject="fine")["data"].code == 250
    files = wait_delivered(d, BOB)
    assert [parse(f)["Subject"] for f in all_message_files(d)] == ["fine"]
    assert len(files) == 1


def test_delete_at_data_is_an_error(daemon):
    d = daemon(scripts={"10-del.rhai": "fn data(ctx, msg) { msg.delete(); }\n"})
    out = send(d)
    assert out["data"].code == 451
    assert out["data"].lines[0].startswith("4.3.0")
    assert "msg.delete() is only available in the fetched stage" in wait_log(d, "msg.delete()")
    assert all_message_files(d) == []


def test_discard_answers_250_and_delivers_nothing(daemon):
    d = daemon(scripts={"10-discard.rhai": """
        fn data(ctx, msg) {
            if msg.subject.contains("junk") {
                msg.add_header("X-Never", "seen");
                return discard();
            }
        }
    """})
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@remote.example>")
        assert c.cmd(f"RCPT TO:<{BOB}>").code == 250
        _, r = c.data(make_message(subject="total junk"))
        assert r.code == 250
        # The same session goes on: a second message is delivered.
        c.cmd("MAIL FROM:<a@remote.example>")
        c.cmd(f"RCPT TO:<{BOB}>")
        _, r = c.data(make_message(subject="real"))
        assert r.code == 250
    files = wait_delivered(d, BOB)
    wait_log(d, "message delivered")
    assert [parse(f)["Subject"] for f in all_message_files(d)] == ["real"]
    assert parse(files[0])["X-Never"] is None
    assert "discarded" in d.log()


# --- header injection -----------------------------------------------------------------------


def test_header_injection_attempts_are_refused(daemon):
    d = daemon(scripts={"10-inject.rhai": """
        fn data(ctx, msg) {
            switch msg.subject {
                "value" => msg.set_header("X", "a\\r\\nBcc: x@remote.example"),
                "lf" => msg.add_header("X", "a\\nBcc: x@remote.example"),
                "name" => msg.add_header("X-A: b\\r\\nBcc", "x@remote.example"),
                "colon" => msg.set_header("Bcc: x", "y"),
                "space" => msg.add_header("X A", "y"),
                "subject" => msg.set_subject("hi\\r\\nBcc: x@remote.example"),
                "nul" => msg.set_header("X", "a\\x00b"),
                "remove" => msg.remove_header("X\\r\\nY"),
                "rcpt" => ctx.add_rcpt("a@example.org>\\r\\nRCPT TO:<x@remote.example"),
                "long" => msg.set_header("X", "a".pad(2000, "b")),
                _ => ()
            }
        }
    """})
    cases = ["value", "lf", "name", "colon", "space", "subject", "nul", "remove", "rcpt", "long"]
    for subject in cases:
        out = send(d, subject=subject)
        assert out["data"].code == 451, (subject, out["data"])
        assert out["data"].lines[0].startswith("4.3.0"), subject
    log = d.log()
    assert "header value may not contain CR, LF or NUL" in log
    assert "invalid header name" in log
    assert "10-inject.rhai:" in log
    assert all_message_files(d) == []
    assert d.messages("x@remote.example") == []


def test_failing_stage_drops_its_actions(daemon):
    # on_error = "accept": the message goes through, but nothing the failing stage asked for.
    d = daemon(
        scripts={
            "10-tag.rhai": """
                fn data(ctx, msg) { msg.add_header("X-Tag", "10"); msg.file_into("Tagged"); }
            """,
            "20-fail.rhai": """
                fn data(ctx, msg) { msg.add_header("X-Tag", "20"); throw "boom"; }
            """,
        },
        extra="[scripts]\non_error = \"accept\"\n",
    )
    out = send(d, subject="survives")
    assert out["data"].code == 250
    path = only_file(d)
    m = parse(path)
    assert m["Subject"] == "survives"
    assert m["X-Tag"] is None
    assert d.messages(BOB, folder="Tagged") == []
    assert "20-fail.rhai:2:" in wait_log(d, "boom")


def test_failing_stage_tempfails_by_default_and_keeps_nothing(daemon):
    d = daemon(scripts={
        "10-tag.rhai": 'fn data(ctx, msg) { msg.file_into("Tagged"); }\n',
        "20-fail.rhai": 'fn data(ctx, msg) { let x = msg.no_such_field; }\n',
    })
    out = send(d)
    assert out["data"].code == 451
    assert out["data"].lines == ["4.3.0 Temporary local problem in script 20-fail.rhai, try again later"]
    log = wait_log(d, "20-fail.rhai:1:")
    assert "20-fail.rhai:1:" in log and "no_such_field" in log
    assert all_message_files(d) == []


def test_actions_of_earlier_stages_apply_with_data(daemon):
    d = daemon(scripts={"10-early.rhai": """
        fn rcpt_to(ctx) {
            if ctx.rcpt == "bob@example.org" { ctx.add_rcpt("copy@example.org"); }
        }
        fn data(ctx, msg) { msg.add_header("X-Data", "yes"); }
    """})
    send(d)
    assert parse(only_file(d, "copy@example.org"))["X-Data"] == "yes"
    assert parse(only_file(d))["X-Data"] == "yes"


def test_log_and_print_go_to_the_daemon_log(daemon):
    d = daemon(scripts={"10-log.rhai": """
        fn data(ctx, msg) {
            log("filing " + msg.subject);
            print("printed " + msg.subject);
            log(42);
            log(2.5);       // not rhai's base-10 logarithm: logged like anything else
        }
    """})
    send(d, subject="logme")
    # The hook's log lines are written once its call is over, after what it printed, and the
    # log writer thread writes what has gathered: wait for the last of them.
    wait_log(d, "printed logme")
    log = wait_log(d, "mailflow::script: 2.5 ")
    lines = [l for l in log.splitlines() if "filing logme" in l]
    assert len(lines) == 1
    assert "file=10-log.rhai" in lines[0] and "stage=data" in lines[0] and "id=" in lines[0]
    assert "printed logme" in log
    texts = [l.split("mailflow::script: ")[-1] for l in log.splitlines() if "mailflow::script: " in l]
    assert any(t.startswith("42 ") for t in texts)
    assert any(t.startswith("2.5 ") for t in texts)
