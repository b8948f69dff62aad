//! Fetches an IdP's JWKS over HTTP(S) through pingora's transport connector (same TLS stack and
//! roots as provider calls).

use crate::auth::jwt::JwksFetch;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct Fetcher {
    transport: TransportConnector,
}

impl Fetcher {
    pub fn new() -> Self {
        Self {
            transport: TransportConnector::new(Some(ConnectorOptions::new(0))),
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let tls = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let mut peer = HttpPeer::new(addr, tls, host.clone());
        peer.options.connection_timeout = Some(FETCH_TIMEOUT);
        let stream = self
            .transport
            .new_stream(&peer)
            .await
            .map_err(|e| e.to_string())?;
        let mut s = HttpSession::new_with_options(stream, &peer);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        req.insert_header(
            "host",
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .map_err(|e| e.to_string())?;
        req.insert_header("accept", "application/json")
            .map_err(|e| e.to_string())?;
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        s.finish_body().await.map_err(|e| e.to_string())?;
        s.read_response().await.map_err(|e| e.to_string())?;
        let status = s.resp_header().map_or(0, |h| h.status.as_u16());
        if status != 200 {
            return Err(format!("{url}: status {status}"));
        }
        let mut body = Vec::new();
        while let Some(b) = s.read_body_bytes().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&b);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("{url}: JWKS larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        Ok(body)
    }
}

impl JwksFetch for Fetcher {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::timeout(FETCH_TIMEOUT, self.get(url))
                .await
                .map_err(|_| format!("{url}: timed out"))?
        })
    }
}
