//! `api_call` steps: HTTP to allow-listed hosts only. Every address a request would reach —
//! the first and each redirect's — is resolved once and checked, and the connection goes to
//! that very address (no second lookup a DNS rebinding could change): cloud metadata addresses
//! and the gateway's own ops plane are refused always, and a redirect may not lead into a
//! private, loopback or link-local range nor off the allow-list. Redirects are followed by hand
//! (at most 3) so that each hop is checked.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Largest response body kept as a step's output.
const MAX_BODY: usize = 1 << 20;
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// `host` or `host:port` entries.
    pub allow_hosts: Vec<String>,
    /// The ops plane's listener: never a target, whatever the allow-list says.
    pub ops: Option<SocketAddr>,
}

/// A failed call: whether retrying may help, and why.
#[derive(Debug)]
pub struct CallError {
    pub retriable: bool,
    pub message: String,
}

fn refused(message: String) -> CallError {
    CallError {
        retriable: false,
        message,
    }
}

fn metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.octets() == [169, 254, 169, 254] || v4.octets() == [100, 100, 100, 200]
        }
        IpAddr::V6(v6) => v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
    }
}

fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| private(IpAddr::V4(v4)))
        }
    }
}

impl Guard {
    fn allowed(&self, host: &str, port: u16) -> bool {
        self.allow_hosts
            .iter()
            .any(|a| a == host || *a == format!("{host}:{port}"))
    }

    /// Checks `url` and resolves it to the one address to connect to.
    async fn target(&self, url: &reqwest::Url, redirected: bool) -> Result<SocketAddr, CallError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(format!("`{}` is not http(s)", url.scheme())));
        }
        let host = url
            .host_str()
            .ok_or_else(|| refused("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        if !self.allowed(&host, port) {
            return Err(refused(format!(
                "host `{host}:{port}` is not in [workflows] allow_hosts"
            )));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| CallError {
                retriable: true,
                message: format!("`{host}` does not resolve: {e}"),
            })?
            .collect();
        let addr = *addrs.first().ok_or_else(|| CallError {
            retriable: true,
            message: format!("`{host}` has no address"),
        })?;
        for a in &addrs {
            if metadata(a.ip()) {
                return Err(refused(format!("`{host}` is a cloud metadata address")));
            }
            let ops = self.ops.is_some_and(|o| {
                o.port() == a.port()
                    && (o.ip() == a.ip() || o.ip().is_unspecified() || a.ip().is_loopback())
            });
            if ops {
                return Err(refused(format!(
                    "`{host}:{port}` is the gateway's ops plane"
                )));
            }
            if redirected && private(a.ip()) {
                return Err(refused(format!(
                    "a redirect to `{host}` leads into a private address range"
                )));
            }
        }
        Ok(addr)
    }

    /// Sends one request, following redirects by hand; answers (status, body as JSON or text).
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(String, String)],
        body: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), CallError> {
        let mut url =
            reqwest::Url::parse(url).map_err(|e| refused(format!("bad URL `{url}`: {e}")))?;
        let mut method = method;
        let mut body = body;
        for hop in 0..=MAX_REDIRECTS {
            let addr = self.target(&url, hop > 0).await?;
            let host = url.host_str().unwrap_or_default().to_string();
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, addr)
                .timeout(timeout)
                .no_proxy()
                .build()
                .map_err(|e| refused(format!("client: {e}")))?;
            let mut req = client.request(method.clone(), url.clone());
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            let resp = req.send().await.map_err(|e| CallError {
                retriable: true,
                message: format!("{} {url}: {}", method, e.without_url()),
            })?;
            let status = resp.status().as_u16();
            if resp.status().is_redirection() {
                let Some(next) = resp
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                else {
                    return Err(refused(format!("{status} without a usable location")));
                };
                if status == 303
                    || ((status == 301 || status == 302) && method == reqwest::Method::POST)
                {
                    method = reqwest::Method::GET;
                    body = None;
                }
                url = next;
                continue;
            }
            let bytes = read_bounded(resp).await?;
            let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            if !(200..300).contains(&status) {
                return Err(CallError {
                    retriable: status >= 500 || status == 429,
                    message: format!(
                        "{method} {url} answered {status}: {}",
                        truncate(&value.to_string())
                    ),
                });
            }
            return Ok((status, value));
        }
        Err(refused(format!("more than {MAX_REDIRECTS} redirects")))
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| CallError {
        retriable: true,
        message: format!("reading the answer: {e}"),
    })? {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(refused(format!("the answer is over {MAX_BODY} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        for ip in ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"] {
            assert!(metadata(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "100.64.0.1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn refusals() {
        let g = Guard {
            allow_hosts: vec![
                "127.0.0.1:9".into(),
                "169.254.169.254".into(),
                "127.0.0.1:9090".into(),
            ],
            ops: Some("127.0.0.1:9090".parse().unwrap()),
        };
        let t = Duration::from_secs(1);
        let call = |u: &'static str| g.call(reqwest::Method::GET, u, &[], None, t);
        let e = call("http://example.com/").await.unwrap_err();
        assert!(
            e.message.contains("not in [workflows] allow_hosts"),
            "{}",
            e.message
        );
        let e = call("http://169.254.169.254/latest/meta-data")
            .await
            .unwrap_err();
        assert!(e.message.contains("metadata"), "{}", e.message);
        let e = call("http://127.0.0.1:9090/admin/v1/whoami")
            .await
            .unwrap_err();
        assert!(e.message.contains("ops plane"), "{}", e.message);
        let e = call("file:///etc/passwd").await.unwrap_err();
        assert!(!e.retriable);
    }
}
