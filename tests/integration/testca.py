"""A private certificate authority for the TLS tests of the pollers, made with the openssl CLI.

`make_ca(folder)` makes a CA (CA:TRUE, as `openssl req -x509` makes it); `ca.issue(...)` signs
a server certificate (CA:FALSE, serverAuth, SAN IP:127.0.0.1 and DNS:localhost by default).
A server presents the issued certificate; a client trusts the CA's `cert` file — what a user
with a self-hosted mail server and a private CA does. A missing `openssl` fails the test:
test.sh installs it.
"""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _openssl(*args):
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl is missing: run test.sh, which installs it")
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)


EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass
class Cert:
    cert: Path
    key: Path


@dataclass
class CA(Cert):
    folder: Path

    def issue(self, name="server", san="IP:127.0.0.1,DNS:localhost", serial=2):
        """A server certificate signed by this CA, for the names in `san`."""
        cert, key, csr = self.folder / f"{name}.pem", self.folder / f"{name}.key", self.folder / f"{name}.csr"
        ext = self.folder / f"{name}.ext"
        ext.write_text(
            f"subjectAltName = {san}\nbasicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
        )
        _openssl("req", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-set_serial", serial,
                 "-days", "2", "-sha256", "-extfile", ext, "-out", cert)
        # Dovecot reads the files as root, its login processes as another user: world-readable
        # is fine for a throw-away test key.
        for p in (cert, key):
            p.chmod(0o644)
        return Cert(cert, key)


def make_ca(folder, name="ca"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", *EC_KEY, "-sha256", "-days", "2", "-keyout", key, "-out", cert,
             "-subj", f"/CN=mailflow test {name}")
    return CA(cert, key, folder)
