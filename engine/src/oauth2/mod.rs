//! OAuth2 for mailbox logins (docs/accounts.md "OAuth2"): SASL XOAUTH2 and OAUTHBEARER
//! messages ([`sasl`]), access tokens from the built-in refresh flow ([`source`]), their
//! storage ([`store`]), token-endpoint calls ([`endpoint`]) and `mailflow oauth2 authorize`
//! ([`authorize`]: device code or loopback redirect), and the relay's XOAUTH2 login ([`relay`]).
//!
//! A leaf under the pollers and the outbound relay, which both log in with it; it uses only
//! the config and the state store.
//!
//! Security: access and refresh tokens are secrets. None is logged; the refresh token lives in
//! the state store (and briefly in a 0600 hand-over file, see [`store`]).

pub mod authorize;
pub mod endpoint;
pub mod relay;
pub mod sasl;
pub mod source;
pub mod store;

pub use sasl::Sasl;
pub use source::{TokenError, TokenSource};

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
