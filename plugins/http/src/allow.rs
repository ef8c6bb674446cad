//! The `allow` list of the http plugin: which URLs a script may call.
//!
//! An entry is a URL (`https://hooks.example/api`). A URL is allowed when its scheme, host and
//! port (default ports filled in) equal an entry's exactly and its path is the entry's path or
//! lies below it on a segment boundary (`/api` admits `/api` and `/api/x`, not `/apix`).
//! Both sides are parsed with the `url` crate, which also resolves `.`/`..` segments, so the
//! URL that is checked is the URL that is sent ([`Allow::check`] returns it).
//!
//! Security: the URLs come from scripts, and scripts build them from message text. URLs with
//! userinfo (`http://allowed@evil/`) are refused outright; entries with userinfo, a query or
//! a fragment are a config error.

use url::Url;

/// A parsed `allow` list.
#[derive(Debug, Clone)]
pub struct Allow {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    scheme: String,
    host: String,
    port: u16,
    /// The path without a trailing `/`: empty for the whole host.
    path: String,
}

/// Why an `allow` entry or a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("{0:?} is not a valid URL: {1}")]
    Invalid(String, url::ParseError),
    #[error("{0:?} is not an http:// or https:// URL")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} carries a user name or password")]
    Userinfo(String),
    #[error("{0:?} has a query or fragment (an allow entry is a scheme, host, port and path)")]
    QueryOrFragment(String),
    #[error("{0:?} is not in [plugins.http] allow")]
    NotAllowed(String),
}

impl Entry {
    fn admits(&self, url: &Url, port: u16, host: &str) -> bool {
        if url.scheme() != self.scheme || host != self.host || port != self.port {
            return false;
        }
        let path = url.path();
        self.path.is_empty()
            || path == self.path
            || path.strip_prefix(self.path.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Scheme, host and port of an http(s) URL without userinfo.
fn parts(text: &str) -> Result<(Url, String, u16), AllowError> {
    let url = Url::parse(text).map_err(|e| AllowError::Invalid(text.to_string(), e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AllowError::Scheme(text.to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AllowError::Userinfo(text.to_string()));
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| AllowError::NoHost(text.to_string()))?;
    let host = host.to_ascii_lowercase();
    let port = url.port_or_known_default().ok_or_else(|| AllowError::NoHost(text.to_string()))?;
    Ok((url, host, port))
}

impl Allow {
    /// Parses the config's entries; the first bad one is the error.
    pub fn parse(entries: &[String]) -> Result<Allow, AllowError> {
        let entries = entries
            .iter()
            .map(|text| {
                let (url, host, port) = parts(text)?;
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(AllowError::QueryOrFragment(text.clone()));
                }
                let path = url.path().trim_end_matches('/').to_string();
                Ok(Entry { scheme: url.scheme().to_string(), host, port, path })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allow { entries })
    }

    /// The URL to send (normalized) when `text` is allowed.
    pub fn check(&self, text: &str) -> Result<Url, AllowError> {
        let (url, host, port) = parts(text).map_err(|e| match e {
            AllowError::Userinfo(_) => e,
            _ => AllowError::NotAllowed(text.to_string()),
        })?;
        if self.entries.iter().any(|entry| entry.admits(&url, port, &host)) {
            Ok(url)
        } else {
            Err(AllowError::NotAllowed(text.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> Allow {
        Allow::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn allowed(a: &Allow, url: &str) -> bool {
        a.check(url).is_ok()
    }

    #[test]
    fn userinfo_cannot_smuggle_another_host() {
        let a = allow(&["http://localhost:8080"]);
        assert!(allowed(&a, "http://localhost:8080/x"));
        assert_eq!(
            a.check("http://localhost:8080@127.0.0.1:9999/x"),
            Err(AllowError::Userinfo("http://localhost:8080@127.0.0.1:9999/x".into()))
        );
        assert!(!allowed(&a, "http://user:pw@localhost:8080/x"));
        assert!(!allowed(&a, "http://localhost:9999/x"));
        assert!(!allowed(&a, "http://localhost:80/x"));
    }

    #[test]
    fn host_is_compared_exactly() {
        let a = allow(&["https://hooks.example"]);
        assert!(allowed(&a, "https://hooks.example/"));
        assert!(allowed(&a, "https://HOOKS.example/notify"));
        assert!(allowed(&a, "https://hooks.example:443/notify"));
        assert!(!allowed(&a, "https://hooks.example.evil/"));
        assert!(!allowed(&a, "https://hooks.example.evil"));
        assert!(!allowed(&a, "https://hooks.example:8443/"));
        assert!(!allowed(&a, "http://hooks.example/"));
        assert!(!allowed(&a, "https://evil.example/?https://hooks.example/"));
    }

    #[test]
    fn default_ports_are_filled_in() {
        let a = allow(&["https://hooks.example:443/", "http://plain.example"]);
        assert!(allowed(&a, "https://hooks.example/x"));
        assert!(allowed(&a, "http://plain.example:80/x"));
        assert!(!allowed(&a, "https://plain.example/x"));
    }

    #[test]
    fn path_on_segment_boundaries() {
        for entry in ["https://h.example/api", "https://h.example/api/"] {
            let a = allow(&[entry]);
            assert!(allowed(&a, "https://h.example/api"), "{entry}");
            assert!(allowed(&a, "https://h.example/api/"), "{entry}");
            assert!(allowed(&a, "https://h.example/api/x?q=1"), "{entry}");
            assert!(!allowed(&a, "https://h.example/apix"), "{entry}");
            assert!(!allowed(&a, "https://h.example/"), "{entry}");
            assert!(!allowed(&a, "https://h.example/api/../admin"), "{entry}");
            assert!(!allowed(&a, "https://h.example/api/%2e%2e/admin"), "{entry}");
        }
    }

    #[test]
    fn the_checked_url_is_the_sent_url() {
        let a = allow(&["https://h.example/api"]);
        assert_eq!(a.check("https://H.example/api/./x/../y").unwrap().as_str(), "https://h.example/api/y");
    }

    #[test]
    fn bad_entries_are_config_errors() {
        for bad in [
            "hooks.example",
            "ftp://hooks.example/",
            "https://",
            "https://u:p@hooks.example/",
            "https://hooks.example/?x=1",
            "https://hooks.example/#f",
            "",
        ] {
            assert!(Allow::parse(&[bad.to_string()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn non_http_urls_are_not_allowed() {
        let a = allow(&["https://h.example/"]);
        assert!(!allowed(&a, "file:///etc/passwd"));
        assert!(!allowed(&a, "not a url"));
    }
}
