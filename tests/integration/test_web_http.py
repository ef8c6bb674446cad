"""The status page over plain HTTP and `mailflow trace`: login, sessions, CSRF, 404/405, no
change without login, escaping, and traces that survive a restart.

Issue #27, docs/web.md.
"""

import json
import time

from conftest import free_port, wait_for
from smtpclient import mailflow, transaction
from webpage import Client, queue_entries, send, start, wait_queue


def test_every_page_needs_a_login_and_nothing_changes_without_one(daemon):
    d, base = start(daemon)
    send(d.port, "junk offer")
    entries = wait_queue(d)
    assert len(entries) == 1 and entries[0]["next_try"] > 0
    anonymous = Client(base)
    for path in ["/", "/now", "/messages", "/scripts", "/accounts", "/queue", "/try", f"/messages/{entries[0]['origin']}"]:
        status, headers, _ = anonymous.get(path)
        assert status in (303, 403), (path, status)
        if status == 303:
            assert headers["Location"] == "/login"
    qid = entries[0]["id"]
    for path in [f"/queue/{qid}/retry", f"/queue/{qid}/delete", "/try", "/logout"]:
        status, _, _ = anonymous.post(path, {"csrf": "x", "stage": "data", "message": "Subject: x\n\nx\n"})
        assert status == 403, (path, status)
    assert queue_entries(d)[0]["next_try"] == entries[0]["next_try"]
    assert len(queue_entries(d)) == 1


def test_login_sets_a_strict_http_only_cookie_and_a_wrong_password_is_refused(daemon):
    d, base = start(daemon)
    c = Client(base)
    status, _, body = c.login("wrong")
    assert status == 401 and "Wrong password" in body
    assert not list(c.jar)
    status, headers, _ = c.login()
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    status, _, body = c.get("/")
    assert status == 200 and "SMTP sessions in flight" in body
    # Behind a TLS proxy the cookie is Secure.
    status, headers, _ = Client(base).post("/login", {"password": "correct horse battery"}, headers={"X-Forwarded-Proto": "https"})
    assert status == 303 and "Secure" in headers["Set-Cookie"]
    # Logging out ends the session.
    c.post("/logout", {"csrf": c.csrf("/")})
    assert c.get("/")[0] == 303


def test_state_changes_need_the_csrf_token(daemon):
    d, base = start(daemon)
    send(d.port, "junk offer")
    entry = wait_queue(d)[0]
    c = Client(base)
    c.login()
    token = c.csrf()
    for bad in ["", "0" * 64, token[:-1]]:
        status, _, body = c.post(f"/queue/{entry['id']}/retry", {"csrf": bad})
        assert status == 403 and "CSRF" in body
    assert queue_entries(d)[0]["next_try"] == entry["next_try"]
    status, headers, _ = c.post(f"/queue/{entry['id']}/retry", {"csrf": token})
    assert status == 303 and headers["Location"] == "/queue"
    # Retried now: the sender tries again at once (the relay is still down: attempts grow).
    assert wait_for(lambda: queue_entries(d) and queue_entries(d)[0]["attempts"] >= 2, timeout=10)
    status, _, _ = c.post(f"/queue/{entry['id']}/delete", {"csrf": token})
    assert status == 303
    assert wait_for(lambda: queue_entries(d) == [], timeout=5)
    # A forged id cannot reach outside the queue folder.
    assert c.post("/queue/..%2F..%2Fmailflow.toml/delete", {"csrf": token})[0] == 404
    assert (d.root / "mailflow.toml").exists()


def test_unknown_paths_are_404_and_wrong_methods_405(daemon):
    d, base = start(daemon)
    c = Client(base)
    c.login()
    assert c.get("/nothing-here")[0] == 404
    assert c.get("/messages/NOSUCHID")[0] == 404
    assert c.get("/queue/ABC/retry")[0] == 405
    assert c.post("/", {"csrf": "x"})[0] == 405
    assert c.post("/messages", {"csrf": "x"})[0] == 405


def test_message_content_is_escaped_and_scripts_are_limited_to_the_origin(daemon):
    d, base = start(daemon)
    qid = send(d.port, "junk <script>alert(1)</script> & more")
    c = Client(base)
    c.login()
    _, headers, body = c.get("/messages")
    assert "junk &lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in body
    assert "<script>alert(1)" not in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    _, _, body = c.get(f"/messages/{qid}")
    assert "&lt;script&gt;" in body and "<script>alert" not in body


def test_recent_messages_search_and_trace_page(daemon):
    d, base = start(daemon)
    junk = send(d.port, "junk offer", sender="carol@remote.example", message_id="<j1@remote.example>")
    plain = send(d.port, "lunch?", sender="dave@remote.example", message_id="<p1@remote.example>")
    c = Client(base)
    c.login()
    assert wait_for(lambda: "Junk" in c.get(f"/messages/{junk}")[2], timeout=5)
    _, _, body = c.get("/messages?q=carol")
    assert junk in body and plain not in body
    _, _, body = c.get("/messages?q=LUNCH")
    assert plain in body and junk not in body
    _, _, body = c.get(f"/messages?q={junk}")
    assert junk in body and plain not in body
    _, _, body = c.get(f"/messages/{junk}")
    assert "10-junk.rhai" in body and "file_into(&quot;Junk&quot;)" in body
    assert "to bob@example.org in Junk" in body and "forward to boss@remote.example queued" in body


def test_try_a_script_shows_the_dry_run_and_sends_nothing(daemon):
    d, base = start(daemon)
    c = Client(base)
    c.login()
    token = c.csrf("/try")
    message = "From: x@remote.example\r\nTo: bob@example.org\r\nSubject: junk\r\n\r\nhi\r\n"
    status, _, body = c.post("/try", {"csrf": token, "stage": "data", "from": "x@remote.example", "to": "bob@example.org", "message": message})
    assert status == 200
    assert "verdict: accept" in body and "10-junk.rhai" in body and "forward(&quot;boss@remote.example&quot;)" in body
    time.sleep(0.5)
    assert queue_entries(d) == [] and d.messages("bob@example.org", "Junk") == []


def test_mailflow_trace_text_json_and_after_a_restart(daemon):
    d, base = start(daemon)
    qid = send(d.port, "junk offer", message_id="<trace-1@remote.example>")
    refused = transaction(d.port, "eve@spam.example", ["bob@example.org"], "Subject: x\n\nx\n")
    assert refused["mail"].code == 550
    entry = wait_queue(d)[0]
    assert wait_for(lambda: "deferred" in mailflow("trace", "--config", d.config_path, qid).stdout, timeout=5)
    out = mailflow("trace", "--config", d.config_path, qid)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "data       accept by 10-junk.rhai:8" in text
    assert 'action: file_into("Junk")' in text
    assert "delivered  to bob@example.org in Junk" in text
    assert f"forward to boss@remote.example queued [{entry['id']}]" in text
    # By Message-ID (with or without <>) and by the forward's queue id: the same trace.
    for other in ["<trace-1@remote.example>", "trace-1@remote.example", entry["id"]]:
        assert json.loads(mailflow("trace", "--config", d.config_path, other, "--json").stdout)["id"] == qid
    doc = json.loads(mailflow("trace", "--config", d.config_path, qid, "--json").stdout)
    steps = {s["stage"]: s for s in doc["steps"]}
    assert steps["mail_from"]["verdict"] == "none" and steps["mail_from"]["decided_by"] is None
    assert steps["data"]["decided_by"] == "10-junk.rhai:8" and doc["subject"] == "junk offer"
    assert {e["kind"] for e in doc["events"]} >= {"delivered", "forwarded", "deferred"}
    assert d.stop() == 0
    # The daemon is gone: read from the state store.
    after = json.loads(mailflow("trace", "--config", d.config_path, qid, "--json").stdout)
    assert after["id"] == qid and after["steps"] == doc["steps"]
    missing = mailflow("trace", "--config", d.config_path, "NOSUCHID")
    assert missing.returncode == 1 and "no trace" in missing.stderr


def test_no_traces_and_no_page_when_turned_off(daemon):
    d = daemon(scripts={}, extra='[web]\ntrace_retention = "0s"\n')
    qid = send(d.port, "hello")
    time.sleep(1)
    assert mailflow("trace", "--config", d.config_path, qid).returncode == 1
    assert "status page listening" not in d.log()


def test_accounts_show_a_poller_backing_off_with_its_error(daemon):
    dead = free_port()
    account = f"""
[[accounts]]
name = "work"
protocol = "imap"
host = "127.0.0.1"
port = {dead}
tls = "none"
username = "me@example.org"
password = "x"
"""
    d, base = start(daemon, extra_web=account)
    c = Client(base)
    c.login()
    assert wait_for(lambda: "backing off" in c.get("/accounts")[2], timeout=10)
    body = c.get("/accounts")[2]
    assert "work" in body and "refused" in body.lower() and "in " in body
