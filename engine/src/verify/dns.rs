//! The resolver the checks ask: the system's, or `[auth] dns_server`, with one attempt of
//! `dns_timeout` per lookup.

use std::net::SocketAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::MessageAuthenticator;

/// Builds the authenticator's resolver. With `server`, only that server is asked (over UDP,
/// and TCP for truncated answers) and `/etc/hosts` is not consulted.
pub fn authenticator(server: Option<SocketAddr>, timeout: Duration) -> Result<MessageAuthenticator, String> {
    let (config, mut options) = match server {
        Some(addr) => {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            let mut options = ResolverOpts::default();
            options.use_hosts_file = ResolveHosts::Never;
            (ResolverConfig::from_name_servers(vec![server]), options)
        }
        None => read_system_conf().map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    options.timeout = timeout;
    // One try per server: a retry would double the wait a client sees before the temperror.
    options.attempts = 1;
    // Names are looked up as given (SPF and DKIM names are fully qualified).
    options.ndots = 0;
    MessageAuthenticator::new(config, options).map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}
