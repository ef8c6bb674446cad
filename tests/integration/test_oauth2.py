"""OAuth2 logins (XOAUTH2, OAUTHBEARER) of the pollers against a real Dovecot.

Dovecot's `oauth2` passdb asks a small local authorization server (oauth2_server.py) whether a
token is active, so a login succeeds only with an access token that server issued and that has
not expired or been revoked. mailflow gets its tokens from `mailflow oauth2 authorize` (the
device-code flow, the test approving the code as the user would) and refreshes them itself, or
from a `password_command`.
"""

import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import BIN, REPO, wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from oauth2_server import OAuth2Server
from smtpclient import mailflow
from test_outbound import Sink
from test_pollers import LOG_SCRIPT, ids, message, processed, wait_processed


@pytest.fixture
def oauth():
    servers = []

    def factory(**kw):
        s = OAuth2Server(**kw)
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.close()


def oauth_table(server):
    return (
        "[accounts.oauth2]\n"
        f'token_url = "{server.url}/token"\n'
        f'device_url = "{server.url}/device"\n'
        f'client_id = "{server.client_id}"\n'
        'client_secret_command = "echo s3cret"\n'
        'scope = "mail offline_access"\n\n'
    )


def oauth_account(dv, server, protocol="imap", auth="xoauth2", **keys):
    """An account with the built-in refresh flow (no password)."""
    text = dv.account(protocol=protocol, auth=auth, **keys)
    text = re.sub(r'^password = .*\n', "", text, flags=re.M)
    return text.rstrip("\n") + "\n" + oauth_table(server)


def authorize(d, server, timeout=30):
    """Runs `mailflow oauth2 authorize --account dv`, approving the code it prints."""
    proc = subprocess.Popen(
        [str(BIN), "oauth2", "authorize", "--account", "dv", "--config", str(d.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"open (\S+) and enter the code (\S+)", line)
            if m:
                assert m.group(1) == f"{server.url}/activate"
                server.approve(m.group(2))
                break
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 0, text + err
    assert "is authorized" in text, text
    return text


def start_oauth(daemon, dovecot, oauth, protocol="imap", auth="xoauth2", lifetime=3600, **keys):
    server = oauth(lifetime=lifetime)
    dv = dovecot(oauth2_url=f"{server.url}/introspect")
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=oauth_account(dv, server, protocol, auth, **keys), start=False)
    assert "stored in" in authorize(d, server)
    d.start()
    return server, dv, d


def test_imap_xoauth2_with_an_authorized_account(daemon, dovecot, oauth):
    server, dv, d = start_oauth(daemon, dovecot, oauth)
    dv.seed([message(1)])
    wait_processed(d, ids(1))
    # The refresh flow ran (authorize stored only the refresh token's first access token,
    # so at most one refresh) and Dovecot checked the token with the introspection endpoint.
    assert server.count("/introspect") >= 1
    assert server.count("/device") == 1
    assert "imap-login: Info: Login: user=<me>, method=XOAUTH2" in dv.log_path.read_text()
    assert "login refused" not in d.log()


def test_pop3_oauthbearer_with_an_authorized_account(daemon, dovecot, oauth):
    server, dv, d = start_oauth(daemon, dovecot, oauth, protocol="pop3", auth="oauthbearer")
    dv.seed([message(1), message(2)])
    wait_processed(d, ids(1, 2))
    assert server.count("/introspect") >= 1
    assert "pop3-login: Info: Login: user=<me>, method=OAUTHBEARER" in dv.log_path.read_text()
    assert "login refused" not in d.log()


def test_access_tokens_are_refreshed_before_they_expire(daemon, dovecot, oauth):
    # 4 s tokens, a POP3 round every second: mailflow must refresh on its own, never logging in
    # with an expired token.
    server, dv, d = start_oauth(daemon, dovecot, oauth, protocol="pop3", lifetime=4)
    for n in range(1, 5):
        dv.seed([message(n)])
        wait_processed(d, ids(n))
        time.sleep(2)
    assert server.count("/token", "refresh_token") >= 2
    assert "login refused" not in d.log(), d.log()[-2000:]


def test_a_refused_access_token_is_refreshed_and_the_login_retried(daemon, dovecot, oauth):
    server, dv, d = start_oauth(daemon, dovecot, oauth)
    dv.seed([message(1)])
    wait_processed(d, ids(1))
    refreshes = server.count("/token", "refresh_token")
    # The server stops accepting the token mailflow holds (it still thinks it valid for an
    # hour); cut the IMAP session so it logs in again.
    server.expire_access_tokens()
    dv.restart()
    dv.seed([message(2)])
    wait_processed(d, ids(2), timeout=30)
    assert "IMAP login refused; retrying with a refreshed token" in d.log()
    assert server.count("/token", "refresh_token") == refreshes + 1


def test_a_revoked_refresh_token_stops_the_account_until_authorized_again(daemon, dovecot, oauth):
    server, dv, d = start_oauth(daemon, dovecot, oauth, protocol="pop3")
    dv.seed([message(1)])
    wait_processed(d, ids(1))
    server.revoke()
    wait_for(lambda: "account stopped until it is authorized again" in d.log(), timeout=15)
    log = d.log()
    assert "the refresh token was refused (invalid_grant" in log, log[-2000:]
    assert "mailflow oauth2 authorize --account dv" in log
    # Stopped: no more logins, no more token requests (not a hot reconnect loop).
    time.sleep(0.5)
    before = (server.count("/token"), server.count("/introspect"))
    dv.seed([message(2)])
    time.sleep(4)
    assert (server.count("/token"), server.count("/introspect")) == before
    assert "2@test.example" not in processed(d)
    # Authorizing again while the daemon runs resumes the account.
    assert "handed to the running daemon" in authorize(d, server)
    wait_processed(d, ids(2), timeout=20)
    assert "new OAuth2 authorization found; resuming" in d.log()


def test_password_command_gives_the_access_token(daemon, dovecot, oauth, tmp_path):
    server = oauth()
    dv = dovecot(oauth2_url=f"{server.url}/introspect")
    access, _ = server.issue(with_refresh=False)
    token_file = tmp_path / "token"
    token_file.write_text(access + "\n")
    account = dv.account(auth="xoauth2", password="x").replace('password = "x"', f'password_command = "cat {token_file}"')
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=account)
    dv.seed([message(1)])
    wait_processed(d, ids(1))
    assert server.count("/introspect") >= 1
    assert server.count("/token") == 0


def test_a_wrong_token_is_a_login_failure_not_a_crash(daemon, dovecot, oauth):
    server = oauth()
    dv = dovecot(oauth2_url=f"{server.url}/introspect")
    account = dv.account(protocol="pop3", auth="oauthbearer", password="not-a-token")
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=account)
    wait_for(lambda: "login refused: AUTH OAUTHBEARER" in d.log(), timeout=15)
    assert d.proc.poll() is None


def test_the_provider_examples_of_the_accounts_doc_are_valid(tmp_path):
    """Every configuration of docs/accounts.md passes `mailflow check` (the Gmail, Microsoft 365
    and Fastmail presets among them)."""
    text = (REPO / "docs" / "accounts.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert sum("provider = " in b for b in blocks) >= 4
    (tmp_path / "scripts").mkdir()
    for i, block in enumerate(blocks):
        config = tmp_path / f"m{i}.toml"
        config.write_text(block)
        r = mailflow("check", "--config", config)
        assert r.returncode == 0, block + r.stdout + r.stderr


FORWARD_FETCHED = """
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "]");
    msg.forward("bob@far.example");
}
"""


def test_the_relay_logs_in_with_the_accounts_token(daemon, dovecot, oauth):
    """`[outbound] relay_account`: forwards go through Dovecot's submission service, which
    accepts them only after AUTH XOAUTH2 with a token the local server issued."""
    server = oauth()
    sink = Sink()
    try:
        dv = dovecot(oauth2_url=f"{server.url}/introspect", submission_relay=sink.port)
        relay = (
            "[outbound]\n"
            f'relay = "smtp://127.0.0.1:{dv.submission_port}"\n'
            'starttls = "never"\n'
            'retry = ["1s"]\n'
            'relay_account = "dv"\n\n'
        )
        d = daemon(scripts={"10-fwd.rhai": FORWARD_FETCHED}, extra=relay + oauth_account(dv, server), start=False)
        authorize(d, server)
        d.start()
        dv.seed([message(1, sender="me@example.org")])
        wait_processed(d, ids(1))
        (got,) = sink.wait(1, timeout=20)
        assert got["rcpts"] == ["<bob@far.example>"]
        assert got["msg"]["Message-ID"] == "<1@test.example>"
        # Both logins (IMAP and submission) were checked against the token server.
        assert server.count("/introspect") >= 2
        assert re.search(r"submission-login: Info: Login: user=<me>, method=XOAUTH2", dv.log_path.read_text()), dv.errors()
        # A refused token: the forward waits (not bounced), then goes with a refreshed token.
        server.expire_access_tokens()
        dv.seed([message(2, sender="me@example.org")])
        dv.restart()
        wait_processed(d, ids(2), timeout=30)
        assert len(sink.wait(2, timeout=30)) == 2
    finally:
        sink.close()


def test_authorize_by_loopback_redirect_with_pkce(daemon, dovecot, oauth):
    """Without a device_url (Google), `authorize` prints a browser URL and waits on 127.0.0.1
    for the redirect; the test plays the browser and the user's consent."""
    server = oauth()
    dv = dovecot(oauth2_url=f"{server.url}/introspect")
    account = oauth_account(dv, server).replace(
        f'device_url = "{server.url}/device"', f'auth_url = "{server.url}/authorize"'
    )
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=account, start=False)
    proc = subprocess.Popen(
        [str(BIN), "oauth2", "authorize", "--account", "dv", "--config", str(d.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in proc.stdout:
            if line.startswith(f"{server.url}/authorize?"):
                url = line.strip()
                break
        assert url, proc.stderr.read()
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        assert q["response_type"] == "code" and q["code_challenge_method"] == "S256"
        assert q["client_id"] == server.client_id and q["scope"] == "mail offline_access"
        redirect = q["redirect_uri"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", redirect)
        # A request without the right state is not the redirect.
        try:
            urllib.request.urlopen(f"{redirect}?code=x&state=wrong", timeout=5)
            raise AssertionError("a wrong state was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        code = server.consent(q["code_challenge"], redirect)
        page = urllib.request.urlopen(f"{redirect}?code={code}&state={q['state']}", timeout=5).read()
        assert b"authorized" in page
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "is authorized" in out
    d.start()
    dv.seed([message(1)])
    wait_processed(d, ids(1))


def test_folders_map_a_scripts_folder_name_to_the_servers(daemon, dovecot):
    """`folders` (what `provider` fills: Gmail's Junk is `[Gmail]/Spam`): `file_into("Junk")`
    moves to the server's folder of that role."""
    dv = dovecot()
    dv.seed([message(1)])
    script = 'fn fetched(ctx, msg) { log("processed [" + msg.message_id + "]"); msg.file_into("Junk"); }'
    account = dv.account().rstrip("\n") + '\nfolders = { Junk = "Lists/Spam" }\n\n'
    d = daemon(scripts={"10-junk.rhai": script}, extra=account)
    wait_processed(d, ids(1))
    wait_for(lambda: "<1@test.example>" in dv.mailbox("Lists/Spam"), timeout=10)
    assert dv.mailbox("Junk") == {}
