"""Scripts at every SMTP stage (docs/scripting.md), against the running daemon with a raw SMTP client:
reject and tempfail with default and custom codes and texts, the file-order chain, and what
`ctx` / `msg` show the scripts.
"""

import pytest

from smtpclient import SMTP, make_message, parse, transaction, wait_delivered, wait_log


# --- connect --------------------------------------------------------------------------------

CONNECT_BY_IP = """
fn connect(ctx) {
    if ctx.remote_ip == "127.0.0.2" {
        return reject(521, "5.7.1 no mail from " + ctx.remote_ip);
    }
    if ctx.remote_ip == "127.0.0.3" {
        return tempfail(421, "4.7.0 busy, later");
    }
    if ctx.remote_ip == "127.0.0.4" {
        return reject("go away");
    }
}
"""


def test_connect_reject_custom_code_then_only_quit(daemon):
    d = daemon(scripts={"10-connect.rhai": CONNECT_BY_IP})
    with SMTP(d.port, source="127.0.0.2") as c:
        assert c.greeting.code == 521
        assert c.greeting.lines == ["5.7.1 no mail from 127.0.0.2"]
        ehlo = c.cmd("EHLO client.example")
        assert ehlo.code == 503
        assert c.cmd("MAIL FROM:<a@remote.example>").code == 503
        assert c.cmd("QUIT").code == 221
    # Another address is served normally by the same set.
    with SMTP(d.port, source="127.0.0.1") as c:
        assert c.greeting.code == 220
        assert c.cmd("EHLO client.example").code == 250


def test_connect_reject_default_is_554(daemon):
    d = daemon(scripts={"10-connect.rhai": CONNECT_BY_IP})
    with SMTP(d.port, source="127.0.0.4") as c:
        assert c.greeting.code == 554
        assert c.greeting.lines == ["5.7.1 go away"]


def test_connect_tempfail_is_421_and_close(daemon):
    d = daemon(scripts={"10-connect.rhai": CONNECT_BY_IP})
    with SMTP(d.port, source="127.0.0.3") as c:
        assert c.greeting.code == 421
        assert c.greeting.lines == ["4.7.0 busy, later"]
        assert c.closed_by_server()


# --- helo -----------------------------------------------------------------------------------

HELO = """
fn helo(ctx) {
    if ctx.helo == "bad.example" {
        return reject(550, "5.7.0 not you, " + ctx.helo);
    }
    if ctx.helo.ends_with(".slow.example") {
        return tempfail(450, "4.7.0 come back later");
    }
    if ctx.helo == "plain.example" {
        return reject();
    }
}
"""


def test_helo_reject_and_tempfail_custom(daemon):
    d = daemon(scripts={"10-helo.rhai": HELO})
    with SMTP(d.port) as c:
        r = c.cmd("EHLO bad.example")
        assert (r.code, r.lines) == (550, ["5.7.0 not you, bad.example"])
        # A refused greeting leaves the session without one.
        assert c.cmd("MAIL FROM:<a@remote.example>").code == 503
        r = c.cmd("HELO a.slow.example")
        assert (r.code, r.lines) == (450, ["4.7.0 come back later"])
        r = c.cmd("EHLO good.example")
        assert r.code == 250
        assert c.cmd("MAIL FROM:<a@remote.example>").code == 250


def test_helo_reject_default_code(daemon):
    d = daemon(scripts={"10-helo.rhai": HELO})
    with SMTP(d.port) as c:
        r = c.cmd("EHLO plain.example")
        assert r.code == 550
        assert r.lines[0].startswith("5.7.1 ")


# --- mail_from ------------------------------------------------------------------------------

MAIL_FROM = """
fn mail_from(ctx) {
    if ctx.sender.ends_with("@spam.example") {
        return reject(553, "5.1.8 sender domain " + ctx.sender.split("@")[1] + " refused");
    }
    if ctx.sender == "greylist@remote.example" {
        return tempfail();
    }
    if ctx.sender == "" && ctx.helo == "bounces.example" {
        return tempfail(452, "4.3.1 no bounces now");
    }
}
"""


def test_mail_from_reject_custom_and_no_transaction(daemon):
    d = daemon(scripts={"10-mail.rhai": MAIL_FROM})
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        r = c.cmd("MAIL FROM:<x@spam.example>")
        assert (r.code, r.lines) == (553, ["5.1.8 sender domain spam.example refused"])
        # The refused MAIL opened no transaction.
        assert c.cmd("RCPT TO:<bob@example.org>").code == 503
        assert c.cmd("MAIL FROM:<ok@remote.example>").code == 250


def test_mail_from_tempfail_default_and_null_sender(daemon):
    d = daemon(scripts={"10-mail.rhai": MAIL_FROM})
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        r = c.cmd("MAIL FROM:<greylist@remote.example>")
        assert r.code == 451
        assert r.lines[0].startswith("4.7.1 ")
    with SMTP(d.port) as c:
        c.cmd("EHLO bounces.example")
        r = c.cmd("MAIL FROM:<>")
        assert (r.code, r.lines) == (452, ["4.3.1 no bounces now"])


# --- rcpt_to --------------------------------------------------------------------------------

RCPT = """
fn rcpt_to(ctx) {
    if ctx.rcpt == "nobody@example.org" {
        return reject("5.1.1 no such user");
    }
    if ctx.rcpt == "full@example.org" {
        return tempfail(452, "4.2.2 mailbox full");
    }
    // What ctx shows: the recipients accepted before this one.
    log("rcpt=" + ctx.rcpt + " before=" + ctx.recipients.len() + " sender=" + ctx.sender);
}
"""


def test_rcpt_to_one_of_two_recipients_refused(daemon):
    d = daemon(scripts={"10-rcpt.rhai": RCPT})
    out = transaction(
        d.port, "alice@remote.example", ["bob@example.org", "nobody@example.org"], make_message(subject="two")
    )
    assert out["rcpt"][0].code == 250
    assert (out["rcpt"][1].code, out["rcpt"][1].lines) == (550, ["5.1.1 no such user"])
    assert out["data"].code == 250
    files = wait_delivered(d, "bob@example.org")
    assert len(files) == 1
    assert parse(files[0])["Subject"] == "two"
    assert d.messages("nobody@example.org") == []
    log = wait_log(d, "rcpt=bob@example.org before=0 sender=alice@remote.example")
    assert "rcpt=bob@example.org before=0 sender=alice@remote.example" in log


def test_rcpt_to_tempfail_custom_and_second_rcpt_sees_first(daemon):
    d = daemon(scripts={"10-rcpt.rhai": RCPT})
    out = transaction(
        d.port,
        "alice@remote.example",
        ["bob@example.org", "full@example.org", "carol@test.example"],
        make_message(),
    )
    assert [r.code for r in out["rcpt"]] == [250, 452, 250]
    assert out["rcpt"][1].lines == ["4.2.2 mailbox full"]
    assert out["data"].code == 250
    assert wait_delivered(d, "carol@test.example")
    assert d.messages("full@example.org") == []
    log = wait_log(d, "rcpt=carol@test.example before=1")
    assert "rcpt=carol@test.example before=1" in log


# --- data -----------------------------------------------------------------------------------

DATA = """
fn data(ctx, msg) {
    if msg.subject.contains("VIAGRA") {
        return reject(554, "5.7.1 spam: " + msg.subject);
    }
    if msg.subject == "later" {
        return tempfail(451, "4.7.1 greylisted, try later");
    }
    if msg.subject == "plain reject" {
        return reject();
    }
}
"""


@pytest.mark.parametrize(
    "subject, code, first",
    [
        ("buy VIAGRA now", 554, "5.7.1 spam: buy VIAGRA now"),
        ("later", 451, "4.7.1 greylisted, try later"),
        ("plain reject", 550, None),
    ],
)
def test_data_reject_and_tempfail(daemon, subject, code, first):
    d = daemon(scripts={"10-data.rhai": DATA})
    out = transaction(d.port, "alice@remote.example", ["bob@example.org"], make_message(subject=subject))
    assert out["data"].code == code
    if first is not None:
        assert out["data"].lines == [first]
    else:
        assert out["data"].lines[0].startswith("5.7.1 ")
    # Nothing was stored: accept one more message and make sure only it arrives.
    ok = transaction(d.port, "alice@remote.example", ["bob@example.org"], make_message(subject="fine"))
    assert ok["data"].code == 250
    files = wait_delivered(d, "bob@example.org")
    assert [parse(f)["Subject"] for f in files] == ["fine"]


def test_reply_text_cannot_inject_lines(daemon):
    d = daemon(scripts={"10-rcpt.rhai": """
        fn rcpt_to(ctx) {
            return reject("no\\r\\n250 2.1.5 OK");
        }
    """})
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@remote.example>")
        r = c.cmd("RCPT TO:<bob@example.org>")
        assert r.code == 550
        assert len(r.lines) == 1
        assert "\r" not in r.lines[0] and "\n" not in r.lines[0]
        # Nothing extra is waiting: the next reply belongs to the next command.
        assert c.cmd("NOOP").code == 250


def test_wrong_code_class_is_a_script_error(daemon):
    d = daemon(scripts={"10-rcpt.rhai": """
        fn rcpt_to(ctx) {
            return reject(250, "looks fine");
        }
    """})
    out = transaction(d.port, "a@remote.example", ["bob@example.org"], make_message())
    assert out["rcpt"][0].code == 451
    assert out["rcpt"][0].lines[0].startswith("4.3.0")
    log = wait_log(d, "the code must be 5xx")
    # The script text starts with a newline: `reject` is on line 3, column 12.
    assert "10-rcpt.rhai:3:12: Runtime error: reject(250, ...): the code must be 5xx" in log


def test_discard_outside_data_is_a_script_error(daemon):
    d = daemon(scripts={"10-rcpt.rhai": "fn rcpt_to(ctx) { discard() }\n"})
    out = transaction(d.port, "a@remote.example", ["bob@example.org"], make_message())
    assert out["rcpt"][0].code == 451
    assert "only available in the data and fetched stages" in wait_log(d, "only available")


# --- the chain ------------------------------------------------------------------------------


def test_files_run_in_name_order_until_a_verdict(daemon):
    d = daemon(scripts={
        "20-reject.rhai": """
            fn rcpt_to(ctx) { reject(550, "5.7.1 by 20") }
        """,
        "10-allow.rhai": """
            fn rcpt_to(ctx) {
                if ctx.rcpt.starts_with("vip") { return accept(); }
                log("10 passes " + ctx.rcpt);
            }
        """,
        "30-never.rhai": """
            fn rcpt_to(ctx) { log("30 ran"); }
        """,
    })
    out = transaction(d.port, "a@remote.example", ["vip@example.org", "other@example.org"], make_message())
    assert out["rcpt"][0].code == 250
    assert (out["rcpt"][1].code, out["rcpt"][1].lines) == (550, ["5.7.1 by 20"])
    log = wait_log(d, "10 passes other@example.org")
    assert "10 passes other@example.org" in log
    assert "10 passes vip@example.org" not in log
    assert "30 ran" not in log


def test_non_verdict_return_value_means_no_verdict(daemon):
    # rhai hands back a block's last value even after a `;`, so anything that is not a verdict
    # (a string, a number) means "no verdict": the next file decides.
    d = daemon(scripts={
        "10-x.rhai": """
            fn mail_from(ctx) {
                if ctx.sender == "a@remote.example" { return "reject"; }
                42;
            }
        """,
        "20-y.rhai": """
            fn mail_from(ctx) {
                if ctx.sender == "b@remote.example" { return reject(550, "5.7.1 by 20"); }
            }
        """,
    })
    with SMTP(d.port) as c:
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@remote.example>").code == 250
        c.cmd("RSET")
        r = c.cmd("MAIL FROM:<b@remote.example>")
        assert (r.code, r.lines) == (550, ["5.7.1 by 20"])


# --- what ctx and msg show ------------------------------------------------------------------

SHOW = r"""
fn data(ctx, msg) {
    msg.add_header("X-Ctx", "ip=" + ctx.remote_ip + " helo=" + ctx.helo + " tls=" + ctx.tls
        + " auth=[" + ctx.auth_user + "] sender=" + ctx.sender + " rcpts=" + ctx.recipients
        + " rcpt=[" + ctx.rcpt + "]");
    msg.add_header("X-Msg-1", "subject=" + msg.subject + " from=" + msg.from
        + " to=" + msg.to + " cc=" + msg.cc);
    msg.add_header("X-Msg-2", "date=" + msg.date + " id=" + msg.message_id);
    msg.add_header("X-Msg-3", "h=" + msg.header("x-custom") + " hs=" + msg.headers("X-Multi")
        + " has=" + msg.has_header("X-CUSTOM") + "/" + msg.has_header("X-Absent")
        + " missing=[" + msg.header("X-Absent") + "]");
    let att = msg.attachments;
    let text = msg.body_text;
    text.trim();  // rhai's trim() works in place
    msg.add_header("X-Msg-4", "text=" + text + " html=" + msg.body_html.contains("<b>bold</b>")
        + " atts=" + att.len() + " att0=" + att[0].name + "," + att[0].content_type + "," + att[0].size);
    msg.add_header("X-Msg-5", "size=" + (msg.size == msg.raw.len()) + " raw=" + msg.raw.contains("X-Multi: two")
        + " flags=" + msg.flags.len());
}
"""

MULTIPART = """\
From: "Alice A." <alice@remote.example>
To: Bob <bob@example.org>, carol@test.example
Cc: dave@remote.example
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from Alice
Date: Mon, 23 Nov 2026 10:00:00 +0000
Message-ID: <abc123@remote.example>
X-Custom: custom value
X-Multi: one
X-Multi: two
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: multipart/alternative; boundary="b2"

--b2
Content-Type: text/plain; charset=utf-8

plain body
--b2
Content-Type: text/html; charset=utf-8

<p><b>bold</b></p>
--b2--
--b1
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b1--
"""


def test_ctx_and_msg_fields_at_data(daemon):
    d = daemon(scripts={"10-show.rhai": SHOW})
    out = transaction(
        d.port, "alice@remote.example", ["bob@example.org", "carol@test.example"], MULTIPART, helo="client.example"
    )
    assert out["data"].code == 250, out["data"]
    files = wait_delivered(d, "bob@example.org")
    assert len(files) == 1
    m = parse(files[0])
    assert m["X-Ctx"] == (
        "ip=127.0.0.1 helo=client.example tls=false auth=[] sender=alice@remote.example "
        'rcpts=["bob@example.org", "carol@test.example"] rcpt=[]'
    )
    assert m["X-Msg-1"] == (
        'subject=Grüße from Alice from=alice@remote.example '
        'to=["bob@example.org", "carol@test.example"] cc=["dave@remote.example"]'
    )
    assert m["X-Msg-2"].startswith("date=2026-11-23T10:00:00")
    assert m["X-Msg-2"].endswith(" id=abc123@remote.example")
    assert m["X-Msg-3"] == 'h=custom value hs=["one", "two"] has=true/false missing=[]'
    assert m["X-Msg-4"] == "text=plain body html=true atts=1 att0=invoice.pdf,application/pdf,9"
    assert m["X-Msg-5"] == "size=true raw=true flags=0"
    # carol got the same message
    assert len(wait_delivered(d, "carol@test.example")) == 1


def test_ctx_at_each_stage(daemon):
    d = daemon(scripts={"10-log.rhai": """
        fn connect(ctx) { log("C ip=" + ctx.remote_ip + " helo=[" + ctx.helo + "]"); }
        fn helo(ctx) { log("H helo=" + ctx.helo); }
        fn mail_from(ctx) { log("M sender=" + ctx.sender + " helo=" + ctx.helo); }
        fn rcpt_to(ctx) { log("R rcpt=" + ctx.rcpt + " sender=" + ctx.sender); }
        fn data(ctx, msg) { log("D rcpts=" + ctx.recipients.len() + " subject=" + msg.subject); }
    """})
    out = transaction(d.port, "", ["bob@example.org"], make_message(subject="stages"), helo="h.example")
    assert out["data"].code == 250
    log = wait_log(d, "D rcpts=1 subject=stages")
    for line in [
        "C ip=127.0.0.1 helo=[]",
        "H helo=h.example",
        "M sender= helo=h.example",
        "R rcpt=bob@example.org sender=",
        "D rcpts=1 subject=stages",
    ]:
        assert line in log
    # log lines are tagged with file and stage
    tagged = [l for l in log.splitlines() if "R rcpt=bob@example.org" in l]
    assert "file=10-log.rhai" in tagged[0] and "stage=rcpt_to" in tagged[0]
    assert wait_delivered(d, "bob@example.org")
