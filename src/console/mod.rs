//! The browser console: static assets compiled into the binary and served by the ops plane
//! under `/console/`, with a strict Content-Security-Policy (no inline script or style, no
//! third-party origin). The console holds no state of its own: every call it makes goes
//! through the admin API or the data plane with the signed-in caller's own credential, so
//! RBAC decides for it exactly as for any client. The data plane answers the console's
//! cross-origin calls (CORS) for the origins `origins` allows.

use crate::config::raw::{RawAuth, RawConsole, RawServer};
use http::Response;

/// What `[console]` configures, resolved.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSettings {
    pub enabled: bool,
    /// Fixed data plane URL for browsers; `None`: the page's host with `data_port`.
    pub data_plane_url: Option<String>,
    /// Explicit origins allowed to call the data plane; empty: those on the ops port.
    pub origins: Vec<String>,
    pub ops_port: Option<u16>,
    pub data_port: Option<u16>,
    pub data_tls: bool,
    pub oidc: Option<Oidc>,
}

#[derive(Debug, Clone)]
pub struct Oidc {
    pub issuer: String,
    pub client_id: String,
    pub scopes: String,
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

pub fn settings(
    c: &RawConsole,
    auth: Option<&RawAuth>,
    server: &RawServer,
    err: &mut dyn FnMut(&str, String),
) -> ConsoleSettings {
    let url_ok = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://"))
            && !u.contains(|ch: char| ch.is_whitespace() || ch == ';' || ch == '\'')
    };
    if let Some(u) = c.data_plane_url.as_deref().filter(|u| !url_ok(u)) {
        err(
            "console.data_plane_url",
            format!("`{u}` is not an http(s) URL"),
        );
    }
    for (i, o) in c.origins.iter().enumerate() {
        if o != "*" && !url_ok(o) {
            err(
                &format!("console.origins.{i}"),
                format!("`{o}` is not an origin (scheme://host[:port]) or *"),
            );
        }
    }
    let issuer = c.oidc_issuer.clone().or_else(|| {
        auth.and_then(|a| a.jwt.as_ref())
            .and_then(|j| j.issuer.clone())
    });
    let oidc = match (&c.oidc_client_id, issuer) {
        (Some(id), Some(issuer)) if url_ok(&issuer) => Some(Oidc {
            issuer: issuer.trim_end_matches('/').to_string(),
            client_id: id.clone(),
            scopes: c.oidc_scopes.clone(),
        }),
        (Some(_), Some(issuer)) => {
            err(
                "console.oidc_issuer",
                format!("`{issuer}` is not an http(s) URL"),
            );
            None
        }
        (Some(_), None) => {
            err(
                "console.oidc_client_id",
                "needs an issuer: console.oidc_issuer or auth.jwt.issuer".into(),
            );
            None
        }
        (None, _) => None,
    };
    ConsoleSettings {
        enabled: c.enabled,
        data_plane_url: c
            .data_plane_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        origins: c
            .origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_string())
            .collect(),
        ops_port: port_of(&server.ops_listen),
        data_port: port_of(&server.listen),
        data_tls: server.tls.is_some(),
        oidc,
    }
}

impl ConsoleSettings {
    /// Whether a page of `origin` may call the data plane from a browser.
    pub fn allows_origin(&self, origin: &str) -> bool {
        if !self.origins.is_empty() {
            return self.origins.iter().any(|o| o == "*" || o == origin);
        }
        // The console's own pages: whatever host name the browser used, on the ops port.
        let (scheme, rest) = match origin.split_once("://") {
            Some(x) => x,
            None => return false,
        };
        let port = match rest.rsplit_once(':') {
            Some((_, p)) if !rest.ends_with(']') => p.parse::<u16>().ok(),
            _ => Some(if scheme == "https" { 443 } else { 80 }),
        };
        self.enabled && port.is_some() && port == self.ops_port
    }

    /// The data plane as the browser on `host` (the page's `Host` header) reaches it.
    fn data_plane_for(&self, host: &str) -> Option<String> {
        if let Some(u) = &self.data_plane_url {
            return Some(u.clone());
        }
        let name = match host.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        };
        // A host header is the client's text: only a plain host name or address is echoed.
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
        let scheme = if self.data_tls { "https" } else { "http" };
        plain.then(|| format!("{scheme}://{name}:{}", self.data_port.unwrap_or(80)))
    }
}

/// The embedded files: (path under `/console/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/dom.js"),
    ),
    (
        "signin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/signin.js"),
    ),
    (
        "playground.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/playground.js"),
    ),
    (
        "snippets.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/snippets.js"),
    ),
    (
        "keys.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/keys.js"),
    ),
    (
        "roles.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/roles.js"),
    ),
    (
        "audit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/audit.js"),
    ),
    (
        "spend.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/spend.js"),
    ),
    (
        "experiments.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/experiments.js"),
    ),
    (
        "health.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/health.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/style.css"),
    ),
];

/// Total bytes of the console's assets (all of them load on first visit).
pub fn assets_bytes() -> usize {
    ASSETS.iter().map(|(_, _, b)| b.len()).sum()
}

fn origin_of(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    url[after..].find('/').map_or(url, |i| &url[..after + i])
}

/// Answers `GET /console/…`; `None` when the path is not the console's.
pub fn serve(
    s: &ConsoleSettings,
    path: &str,
    host: &str,
    if_none_match: Option<&[u8]>,
) -> Option<Response<Vec<u8>>> {
    if !s.enabled {
        return None;
    }
    if path == "/console" {
        return Some(
            Response::builder()
                .status(308)
                .header("location", "/console/")
                .header("content-length", 0)
                .body(Vec::new())
                .unwrap_or_default(),
        );
    }
    let rest = path.strip_prefix("/console/")?;
    let data_plane = s.data_plane_for(host);
    if rest == "config.json" {
        let body = serde_json::json!({
            "data_plane_url": data_plane,
            "oidc": s.oidc.as_ref().map(|o| serde_json::json!({
                "issuer": o.issuer, "client_id": o.client_id, "scopes": o.scopes,
            })),
            "version": env!("CARGO_PKG_VERSION"),
        });
        return Some(secured(
            200,
            "application/json",
            body.to_string().into_bytes(),
            None,
            "",
        ));
    }
    // Client-side routes (`#/keys`) keep every page at `/console/`; anything else is a file.
    let Some((_, ctype, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == rest) else {
        return Some(secured(
            404,
            "application/json",
            br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#.to_vec(),
            None,
            "",
        ));
    };
    let mut connect = String::from("'self'");
    for o in data_plane
        .iter()
        .map(String::as_str)
        .chain(s.oidc.as_ref().map(|o| o.issuer.as_str()))
    {
        connect.push(' ');
        connect.push_str(origin_of(o));
    }
    // The validator covers the policy too: a 304's headers replace the cached ones, so it
    // carries the same policy, and a changed data plane address is a changed page.
    let etag = format!(
        "\"{:016x}{:08x}\"",
        crate::config::source_hash(bytes),
        crate::config::source_hash(connect.as_bytes()) as u32
    );
    if if_none_match == Some(etag.as_bytes()) {
        return Some(secured(304, ctype, Vec::new(), Some(&etag), &connect));
    }
    Some(secured(200, ctype, bytes.to_vec(), Some(&etag), &connect))
}

/// A console response with the security headers every one carries.
fn secured(
    status: u16,
    ctype: &str,
    body: Vec<u8>,
    etag: Option<&str>,
    connect: &str,
) -> Response<Vec<u8>> {
    let connect = if connect.is_empty() {
        "'self'"
    } else {
        connect
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    let mut b = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("content-length", body.len())
        .header("content-security-policy", csp)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
        .header("cache-control", "no-cache");
    if let Some(e) = etag {
        b = b.header("etag", e);
    }
    b.body(body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> ConsoleSettings {
        ConsoleSettings {
            enabled: true,
            origins: origins.iter().map(|o| o.to_string()).collect(),
            ops_port: Some(9090),
            data_port: Some(8080),
            ..Default::default()
        }
    }

    #[test]
    fn origins() {
        let s = settings(&[]);
        assert!(s.allows_origin("http://127.0.0.1:9090"));
        assert!(s.allows_origin("http://gw.internal:9090"));
        assert!(!s.allows_origin("http://evil.example"));
        assert!(!s.allows_origin("http://evil.example:9091"));
        assert!(!s.allows_origin("null"));
        let s = settings(&["https://console.example.com"]);
        assert!(s.allows_origin("https://console.example.com"));
        assert!(!s.allows_origin("http://127.0.0.1:9090"));
    }

    #[test]
    fn data_plane_follows_the_page_host_but_never_echoes_junk() {
        let s = settings(&[]);
        assert_eq!(
            s.data_plane_for("gw.internal:9090").as_deref(),
            Some("http://gw.internal:8080")
        );
        assert_eq!(s.data_plane_for("a'b;c:9090"), None);
    }

    #[test]
    fn every_page_is_small_and_locked_down() {
        // The first visit loads every asset; the issue's budget is 200 KB.
        assert!(assets_bytes() < 200_000, "{}", assets_bytes());
        let r = serve(&settings(&[]), "/console/", "127.0.0.1:9090", None).unwrap();
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' http://127.0.0.1:8080;"),
            "{csp}"
        );
        // A revalidated page keeps its policy.
        let etag = r.headers()["etag"].as_bytes().to_vec();
        let r = serve(&settings(&[]), "/console/", "127.0.0.1:9090", Some(&etag)).unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(
            r.headers()["content-security-policy"].to_str().unwrap(),
            csp
        );
        for (_, ctype, bytes) in ASSETS {
            if ctype.starts_with("text/html") {
                let html = std::str::from_utf8(bytes).unwrap();
                assert!(!html.contains("<script>"), "no inline script");
                assert!(!html.contains("style="), "no inline style");
            }
        }
    }
}
