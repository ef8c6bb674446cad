//! Login, sessions and CSRF tokens for the status page.
//!
//! A session is a random 256-bit token in a cookie (HttpOnly, SameSite=Strict; Secure when
//! the request came over HTTPS), kept in memory for [`SESSION_TTL`], at most [`MAX_SESSIONS`]
//! (the oldest goes). Each session has its own CSRF token, which every POST form carries.
//!
//! Security: the password is checked against `[web] password_hash` (argon2, on a blocking
//! thread); failed logins wait a second; tokens are compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use rand::RngCore as _;
use serde::Deserialize;

use super::{layout, Web};

const COOKIE: &str = "mailflow_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSIONS: usize = 64;
/// Longest password read from the login form.
const MAX_PASSWORD: usize = 1024;

/// A logged-in browser.
#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    created: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal strings, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    fn create(&self) -> (String, Session) {
        let token = random_token();
        let session = Session { csrf: random_token(), created: Instant::now() };
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(token.clone(), session.clone());
        (token, session)
    }

    fn get(&self, token: &str) -> Option<Session> {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token).filter(|s| s.created.elapsed() < SESSION_TTL).cloned()
    }

    fn remove(&self, token: &str) {
        self.by_token.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

impl Web {
    /// The request's session, if logged in.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        cookie_token(headers).and_then(|t| self.sessions.get(&t))
    }

    /// The session of a POST whose form carries its CSRF token; otherwise the refusal.
    pub fn check_post(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Box<Response>> {
        let Some(session) = self.session(headers) else {
            return Err(Box::new((StatusCode::FORBIDDEN, "not logged in\n").into_response()));
        };
        if !same(&session.csrf, csrf) {
            return Err(Box::new((StatusCode::FORBIDDEN, "bad or missing CSRF token\n").into_response()));
        }
        Ok(session)
    }
}

/// A GET of a page that needs a login: the session, or a redirect to the login form.
pub fn need_login(web: &Web, headers: &HeaderMap) -> Result<Session, Box<Response>> {
    web.session(headers).ok_or_else(|| Box::new(Redirect::to("/login").into_response()))
}

/// Whether the browser reached us over HTTPS (through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

pub async fn login_form(State(web): State<Arc<Web>>) -> Response {
    let configured = !web.deps.config.load().web.password_hash.is_empty();
    login_page(configured, None)
}

fn login_page(configured: bool, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Log in" }
        @if !configured {
            p.error { "No password is set: add [web] password_hash (from mailflow hash-password) to the config." }
        }
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/login" {
            label { "Password " input type="password" name="password" autofocus; }
            " " button type="submit" { "Log in" }
        }
    };
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    (status, layout::bare("Log in", body)).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    password: String,
}

pub async fn login(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let hash = web.deps.config.load().web.password_hash.clone();
    if hash.is_empty() || form.password.is_empty() || form.password.len() > MAX_PASSWORD {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return login_page(!hash.is_empty(), Some("Wrong password."));
    }
    let password = form.password;
    let ok = tokio::task::spawn_blocking(move || {
        let users = std::collections::BTreeMap::from([("web".to_string(), crate::config::AuthUser::from(hash))]);
        crate::smtp::credentials::verify(&users, "web", &password)
    })
    .await
    .unwrap_or(false);
    if !ok {
        tracing::warn!("status page: failed login");
        tokio::time::sleep(Duration::from_secs(1)).await;
        return login_page(true, Some("Wrong password."));
    }
    let (token, _) = web.sessions.create();
    let secure = if over_tls(&headers) { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_TTL.as_secs());
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Err(refused) = web.check_post(&headers, &form.csrf) {
        return *refused;
    }
    if let Some(token) = cookie_token(&headers) {
        web.sessions.remove(&token);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
