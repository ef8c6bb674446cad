"""A small OAuth2 authorization server for the OAuth2 tests, on a loopback port in a thread.

It issues tokens (RFC 6749 refresh_token and authorization_code grants with PKCE, RFC 8628
device authorization and device_code grant) and answers Dovecot's token introspection (RFC 7662, `POST token=…`), so a
private Dovecot with the `oauth2` passdb accepts exactly the access tokens issued here and not
yet expired or revoked. The test plays the user with `approve(user_code)` and the operator with
`expire_access_tokens()` and `revoke()`. Every request is recorded in `calls` (path, grant).
"""

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OAuth2Server:
    def __init__(self, username="me", lifetime=3600, client_id="mailflow-test"):
        self.username = username
        self.lifetime = lifetime
        self.client_id = client_id
        self.lock = threading.Lock()
        self.access = {}  # token -> expiry (unix time)
        self.refresh = set()
        self.devices = {}  # device_code -> {"user_code", "approved"}
        self.codes = {}  # authorization code -> (PKCE challenge, redirect_uri)
        self.calls = []  # (path, grant_type or "")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = server.handle(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- what the tests do ------------------------------------------------------------------

    def issue(self, with_refresh=True):
        """Mints tokens directly (as another tool would have): (access, refresh)."""
        with self.lock:
            return self._issue(with_refresh)

    def approve(self, user_code):
        with self.lock:
            for device in self.devices.values():
                if device["user_code"] == user_code:
                    device["approved"] = True
                    return
        raise AssertionError(f"no device code for {user_code}")

    def consent(self, challenge, redirect_uri):
        """The user consented in the browser (authorization-code flow): a code for the redirect."""
        with self.lock:
            code = "ac-" + secrets.token_urlsafe(16)
            self.codes[code] = (challenge, redirect_uri)
            return code

    def expire_access_tokens(self):
        """Every access token issued so far stops working (expired early, or revoked alone)."""
        with self.lock:
            self.access.clear()

    def revoke(self):
        """The user revoked mailflow's access: refresh and access tokens stop working."""
        with self.lock:
            self.access.clear()
            self.refresh.clear()

    def count(self, path, grant=None):
        with self.lock:
            return sum(1 for p, g in self.calls if p == path and (grant is None or g == grant))

    # --- the endpoints ----------------------------------------------------------------------

    def _issue(self, with_refresh=True):
        access = "at-" + secrets.token_urlsafe(24)
        self.access[access] = time.time() + self.lifetime
        refresh = None
        if with_refresh:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self.refresh.add(refresh)
        return access, refresh

    def _tokens(self, refresh=None):
        access, new_refresh = self._issue(with_refresh=refresh is None)
        body = {"access_token": access, "token_type": "Bearer", "expires_in": self.lifetime}
        if new_refresh:
            body["refresh_token"] = new_refresh
        return 200, body

    def handle(self, path, form):
        with self.lock:
            grant = form.get("grant_type", "")
            self.calls.append((path, grant))
            if path == "/introspect":
                expiry = self.access.get(form.get("token", ""))
                if expiry is None or expiry < time.time():
                    return 200, {"active": False}
                return 200, {"active": True, "username": self.username}
            if form.get("client_id") != self.client_id:
                return 401, {"error": "invalid_client"}
            if path == "/device":
                code = "dc-" + secrets.token_urlsafe(16)
                user_code = secrets.token_hex(4).upper()
                self.devices[code] = {"user_code": user_code, "approved": False}
                return 200, {
                    "device_code": code,
                    "user_code": user_code,
                    "verification_uri": f"{self.url}/activate",
                    "expires_in": 120,
                    "interval": 1,
                }
            if path != "/token":
                return 404, {"error": "not_found"}
            if grant == "refresh_token":
                if form.get("refresh_token") not in self.refresh:
                    return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
                return self._tokens(refresh=form["refresh_token"])
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                device = self.devices.get(form.get("device_code"))
                if device is None:
                    return 400, {"error": "expired_token"}
                if not device["approved"]:
                    return 400, {"error": "authorization_pending"}
                del self.devices[form["device_code"]]
                return self._tokens()
            if grant == "authorization_code":
                challenge, redirect_uri = self.codes.pop(form.get("code"), (None, None))
                verifier = form.get("code_verifier", "").encode()
                computed = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
                if challenge is None or computed != challenge or form.get("redirect_uri") != redirect_uri:
                    return 400, {"error": "invalid_grant"}
                return self._tokens()
            return 400, {"error": "unsupported_grant_type"}
