#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what it needs, builds, runs
# the Rust unit tests and the integration tests against the real binary with real clients.
#   bash test.sh            # everything
#   bash test.sh -k relay   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v swaks >/dev/null || need_apt+=(swaks)
# swaks's TLS (--tls, --tls-on-connect) needs Net::SSLeay and IO::Socket::SSL, which are only
# Recommends of the swaks package: install them by name, check that Perl can load them.
perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null || need_apt+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v openssl >/dev/null || need_apt+=(openssl)
# Postfix's smtp-sink: the independent SMTP server the outbound tests relay to. Installed
# without configuring (or starting) a Postfix mail system.
[ -x /usr/sbin/smtp-sink ] || command -v smtp-sink >/dev/null || need_apt+=(postfix)
# Dovecot: the real IMAP/POP3 server the poller tests start private instances of (as the
# unprivileged user mfmail, on free loopback ports; the system instance is not used).
[ -x /usr/lib/dovecot/imap ] || need_apt+=(dovecot-imapd)
[ -x /usr/lib/dovecot/pop3 ] || need_apt+=(dovecot-pop3d)
# Its submission service: the relay that accepts AUTH XOAUTH2 in the OAuth2 tests.
[ -x /usr/lib/dovecot/submission ] || need_apt+=(dovecot-submissiond)
# Its LMTP service: the mail store the LMTP delivery tests deliver into.
[ -x /usr/lib/dovecot/lmtp ] || need_apt+=(dovecot-lmtpd)
# Spam scanners for the rspamd/spamd plugin tests (private instances on loopback): rspamd,
# Redis for its Bayes statistics, SpamAssassin's spamd with its rules.
[ -x /usr/bin/rspamd ] && [ -f /etc/rspamd/rspamd.conf ] || need_apt+=(rspamd)
[ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
[ -x /usr/sbin/spamd ] || need_apt+=(spamd)
[ -f /usr/share/spamassassin/20_body_tests.cf ] && perl -MMail::SpamAssassin -e1 2>/dev/null || need_apt+=(spamassassin)
# valgrind: bench/check-hooks counts the script instructions per message (the hook budget).
command -v valgrind >/dev/null || need_apt+=(valgrind)
# GNU Mailutils imap4d/pop3d: the second IMAP/POP3 servers of the poller tests (private
# instances on loopback, like Dovecot's); popauth (mailutils-pop3d) makes their APOP database.
[ -x /usr/sbin/imap4d ] || need_apt+=(mailutils-imap4d)
{ [ -x /usr/sbin/pop3d ] && [ -x /usr/bin/popauth ]; } || need_apt+=(mailutils-pop3d)
# systemd-analyze: `verify` checks the unit in contrib/ (the package is not started here).
systemd-analyze --version >/dev/null 2>&1 || need_apt+=(systemd)
# Headless Chromium and its WebDriver: the status page's browser tests (no browser download:
# Selenium, from PyPI below, drives the Debian chromium through /usr/bin/chromedriver).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! id mfmail >/dev/null 2>&1; then
    echo "== creating user mfmail (mail processes of the test Dovecot)"
    useradd -r -M -s /usr/sbin/nologin mfmail
fi
pip_install() {
    python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}
if ! python3 -c "import pytest" 2>/dev/null; then
    echo "== installing pytest"
    pip_install pytest
fi
# dnslib: the test DNS server that answers MX queries in the outbound tests' mx mode.
if ! python3 -c "import dnslib" 2>/dev/null; then
    echo "== installing dnslib"
    pip_install dnslib
fi
# dkimpy (with PyNaCl for ed25519 and authres for ARC): the independent DKIM/ARC signer whose
# messages the authentication tests verify mailflow against, and the verifier of mailflow's
# own signatures and seals.
if ! python3 -c "import dkim, nacl.signing, authres" 2>/dev/null; then
    echo "== installing dkimpy pynacl authres"
    pip_install dkimpy pynacl authres
fi

# Selenium: drives the Debian Chromium in the status page's browser tests.
if ! python3 -c "import selenium.webdriver.chrome.service" 2>/dev/null; then
    echo "== installing selenium"
    pip_install selenium
fi

echo "== cargo build"
cargo build --locked --bins
echo "== cargo test"
cargo test --locked --workspace -q
echo "== hook benchmarks (short mode)"
bash bench/check-hooks
echo "== integration tests"
python3 -m pytest -q -p no:cacheprovider tests/integration "$@"
