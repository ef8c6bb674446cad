//! Calls to an OAuth2 authorization server: form POSTs (RFC 6749 §4.1.3, §6; RFC 8628 §3.1,
//! §3.4) with ureq, the HTTP client the `http` plugin already brings (rustls with ring).
//!
//! Input: an endpoint URL and form fields; output: the parsed JSON answer, or an
//! [`EndpointError`] that tells a definite refusal (`invalid_grant`: the refresh token was
//! revoked or expired) from a passing failure (network, 5xx) the caller retries.
//!
//! Limits: answers over [`MAX_ANSWER`] bytes are refused; each call takes at most
//! [`CALL_TIMEOUT`]. Blocking: call from `spawn_blocking` (see [`post_form_async`]).
//! Security: answers carry secrets (tokens) and are never logged; error texts from the server
//! are cut to a short printable excerpt.

use std::time::Duration;

use serde::Deserialize;

/// Largest answer read from an endpoint.
pub const MAX_ANSWER: u64 = 64 * 1024;
/// Longest a call may take, connect to last byte.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The server could not be reached or its answer not read: try again later.
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered with an OAuth2 error (`invalid_grant`, `authorization_pending`, …).
    #[error("{url}: {code}{}", if description.is_empty() { String::new() } else { format!(" ({description})") })]
    Refused { url: String, code: String, description: String },
    /// An answer that is not what RFC 6749 describes.
    #[error("{url}: {message}")]
    Malformed { url: String, message: String },
}

impl EndpointError {
    /// The OAuth2 error code when the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            EndpointError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A token endpoint's success answer (RFC 6749 §5.1).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenAnswer {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Present when the server issues (or rotates) a refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// A device authorization endpoint's answer (RFC 8628 §3.2; Google spells it `verification_url`).
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAnswer {
    pub device_code: String,
    pub user_code: String,
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub interval: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// POSTs `form` to `url` and decodes a 2xx JSON answer as `T`; an OAuth2 error answer (any
/// status with an `error` member) is [`EndpointError::Refused`].
pub fn post_form<T: serde::de::DeserializeOwned>(url: &str, form: &[(&str, &str)]) -> Result<T, EndpointError> {
    let unreachable = |message: String| EndpointError::Unreachable { url: url.to_string(), message };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(CALL_TIMEOUT))
        .build()
        .into();
    let mut response = agent
        .post(url)
        .header("Accept", "application/json")
        .send_form(form.iter().copied())
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    if let Ok(error) = serde_json::from_str::<ErrorAnswer>(&text) {
        return Err(EndpointError::Refused {
            url: url.to_string(),
            code: excerpt(&error.error),
            description: excerpt(error.error_description.as_deref().unwrap_or("")),
        });
    }
    if status >= 500 || status == 429 {
        return Err(unreachable(format!("HTTP {status}")));
    }
    if !(200..300).contains(&status) {
        return Err(EndpointError::Malformed {
            url: url.to_string(),
            message: format!("HTTP {status}: {}", excerpt(&text)),
        });
    }
    serde_json::from_str(&text)
        .map_err(|e| EndpointError::Malformed { url: url.to_string(), message: format!("not a valid answer: {e}") })
}

/// [`post_form`] on a blocking thread.
pub async fn post_form_async<T: serde::de::DeserializeOwned + Send + 'static>(
    url: &str,
    form: Vec<(&'static str, String)>,
) -> Result<T, EndpointError> {
    let owned = url.to_string();
    tokio::task::spawn_blocking(move || {
        let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post_form(&owned, &fields)
    })
    .await
    .unwrap_or_else(|e| Err(EndpointError::Unreachable { url: url.to_string(), message: e.to_string() }))
}

/// Printable, at most 200 characters: server texts end up in logs.
fn excerpt(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}
