//! The frame around every page: navigation, style, security headers, the refresh script.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::auth::Session;

/// Scripts only from this origin (no inline script can run, whatever a message says); no
/// framing; forms post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:.5em 1em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}
header a{color:#cde;text-decoration:none}header a.on{color:#fff;font-weight:bold}
header form{margin-left:auto}main{padding:1em;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef}.num{text-align:right}.error{color:#a00}.ok{color:#070}.muted{color:#777}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #ddd;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.6em}pre{background:#fff;border:1px solid #ddd;padding:.5em;overflow:auto}
textarea{width:100%;font-family:monospace}svg{background:#fff;border:1px solid #ddd}
"#;

/// The refresh script: reloads the "Now" numbers every 3 seconds.
const SCRIPT: &str = r#"(function(){var el=document.getElementById('now');if(!el)return;
setInterval(function(){fetch('/now',{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null})
.then(function(t){if(t!==null)el.innerHTML=t;}).catch(function(){});},3000);})();"#;

const NAV: [(&str, &str); 6] = [
    ("/", "Now"),
    ("/messages", "Recent messages"),
    ("/scripts", "Scripts"),
    ("/accounts", "Accounts"),
    ("/queue", "Queue"),
    ("/try", "Try a script"),
];

/// A page for a logged-in user.
pub fn page(title: &str, session: &Session, active: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width";
                title { (title) " — mailflow" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "mailflow" }
                    @for (href, name) in NAV {
                        a href=(href) class=[(href == active).then_some("on")] { (name) }
                    }
                    form method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main { (body) }
                script src="/app.js" {}
            }
        }
    };
    secure(StatusCode::OK, markup.into_string())
}

/// A page without navigation (login).
pub fn bare(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) " — mailflow" } style { (PreEscaped(STYLE)) } }
            body { main { (body) } }
        }
    };
    secure(StatusCode::OK, markup.into_string())
}

/// HTML with the security headers.
pub fn secure(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub async fn not_found() -> Response {
    let mut response = bare("Not found", html! { h1 { "Not found" } p { a href="/" { "Status page" } } });
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// `2026-01-02 03:04:05` UTC of unix milliseconds (seconds precision).
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let full = crate::trace::text::time(ms);
    full[..19].to_string()
}

/// "3m 5s" from seconds.
pub fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}
