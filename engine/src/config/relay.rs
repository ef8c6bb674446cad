//! `[outbound] relay`: the relay URL (`smtp[s]://[user[:password]@]host[:port]`) taken apart
//! and checked when the config is loaded, with `relay_user`/`relay_password`.
//!
//! Security: the password never appears in an error (the URL is shown redacted).

use super::OutboundConfig;

/// `[outbound] relay` taken apart: `smtp[s]://[user[:password]@]host[:port]`.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayUrl {
    pub implicit_tls: bool,
    pub host: String,
    pub port: u16,
    /// From the URL (percent-decoded) or else `relay_user`/`relay_password`.
    pub credentials: Option<(String, String)>,
    /// `relay_cert_sha256`: the SHA-256 of the only certificate the relay may present.
    pub cert_sha256: Option<[u8; 32]>,
}

/// Parses and checks `[outbound] relay` with `relay_user`/`relay_password`; `mailflow check`
/// and `run` both go through it.
pub fn parse_relay(config: &OutboundConfig) -> Result<RelayUrl, String> {
    let url = config.relay.as_str();
    let (implicit_tls, rest) = if let Some(rest) = url.strip_prefix("smtps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("smtp://") {
        (false, rest)
    } else {
        return Err(format!("[outbound] relay {:?}: use smtp://host:port or smtps://host:port", redacted(url)));
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    let (host, port) = host_port(hostport, if implicit_tls { 465 } else { 25 })?;
    if host.is_empty() {
        return Err("[outbound] relay: no host".into());
    }
    let credentials = match userinfo {
        Some(_) if !config.relay_user.is_empty() => {
            return Err("[outbound] relay: credentials both in the URL and in relay_user; keep one".into())
        }
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            Some((percent_decode(user)?, percent_decode(password)?))
        }
        None if config.relay_user.is_empty() => None,
        None => Some((config.relay_user.clone(), config.relay_password.clone())),
    };
    let cert_sha256 = parse_pin(&config.relay_cert_sha256)?;
    Ok(RelayUrl { implicit_tls, host, port, credentials, cert_sha256 })
}

/// `relay_cert_sha256`: 64 hex digits, upper or lower case, colons between bytes allowed (as
/// `openssl x509 -noout -fingerprint -sha256` prints it). `None` when empty.
pub fn parse_pin(text: &str) -> Result<Option<[u8; 32]>, String> {
    let hex: String = text.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
    if hex.is_empty() {
        return Ok(None);
    }
    let bad = || format!("[outbound] relay_cert_sha256 {text:?}: 64 hex digits (SHA-256 of the DER certificate)");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Some(pin))
}

/// `url` with whatever stands before an `@` (user and password) replaced, for messages.
fn redacted(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => {
            let scheme = before.split_once("://").map_or("", |(s, _)| s);
            format!("{scheme}://…@{after}")
        }
        None => url.to_string(),
    }
}

/// `%XX` escapes of a URL's user or password (RFC 3986 §2.1), so `@`, `:` and `/` can be used.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| "[outbound] relay: a '%' in the user or password must start %XX".to_string())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "[outbound] relay: the user or password is not UTF-8".to_string())
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with `default` when no port is given.
fn host_port(rest: &str, default: u16) -> Result<(String, u16), String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("[outbound] relay: bad port {p:?}"));
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("[outbound] relay: no ']' after the IPv6 address in {rest:?}"))?;
        return match after {
            "" => Ok((host.to_string(), default)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), port(p)?)),
                None => Err(format!("[outbound] relay: unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    match rest.rsplit_once(':') {
        Some((host, p)) => Ok((host.to_string(), port(p)?)),
        None => Ok((rest.to_string(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::{host_port, parse_pin, parse_relay, RelayUrl};
    use crate::config::OutboundConfig;

    fn relay(url: &str, user: &str) -> Result<RelayUrl, String> {
        let config = OutboundConfig {
            relay: url.into(),
            relay_user: user.into(),
            relay_password: "pw".into(),
            ..Default::default()
        };
        parse_relay(&config)
    }

    #[test]
    fn relay_url_with_and_without_credentials() {
        let plain = relay("smtp://smtp.example:587/", "").unwrap();
        assert_eq!(
            (plain.implicit_tls, plain.host.as_str(), plain.port, plain.credentials),
            (false, "smtp.example", 587, None)
        );
        let fields = relay("smtps://smtp.example", "me").unwrap();
        assert_eq!((fields.port, fields.credentials), (465, Some(("me".into(), "pw".into()))));
        let inline = relay("smtp://me%40home:p%3Ass@w0rd@[::1]:2526", "").unwrap();
        assert_eq!(inline.host, "::1");
        assert_eq!(inline.credentials, Some(("me@home".into(), "p:ss@w0rd".into())));
        assert!(relay("smtp://me:pw@smtp.example", "other").is_err());
        assert!(relay("smtp://me:%zz@smtp.example", "").is_err());
        assert!(relay("smtp://me:%+A@smtp.example", "").is_err());
        let shown = relay("submission://me:secret@smtp.example", "").unwrap_err();
        assert!(!shown.contains("secret") && shown.contains("smtp.example"), "{shown}");
        assert!(relay("foo://smtp.example", "").is_err());
        assert!(relay("smtp://", "").is_err());
    }

    #[test]
    fn certificate_pins() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_pin(&hex).unwrap(), Some([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), Some([0xab; 32]));
        assert_eq!(parse_pin("").unwrap(), None);
        assert!(parse_pin(&"ab".repeat(31)).is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn relay_host_and_port() {
        assert_eq!(host_port("smtp.example:587", 25), Ok(("smtp.example".into(), 587)));
        assert_eq!(host_port("smtp.example", 25), Ok(("smtp.example".into(), 25)));
        assert_eq!(host_port("[::1]:2526", 25), Ok(("::1".into(), 2526)));
        assert_eq!(host_port("[::1]", 465), Ok(("::1".into(), 465)));
        assert!(host_port("smtp.example:x", 25).is_err());
        assert!(host_port("[::1", 25).is_err());
        assert!(host_port("[::1]x", 25).is_err());
    }
}
