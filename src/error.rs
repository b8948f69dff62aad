//! One error type for everything the gateway itself refuses or fails at, mapped once to an HTTP
//! status, an OpenAI-shaped JSON body and a bounded metric label.

use std::fmt::Write as _;

/// A failure the gateway reports to the client. Provider errors are not in here: those pass
/// through with the provider's own status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The body is not JSON, or not an object.
    InvalidJson(String),
    /// A required field is missing or has the wrong type.
    InvalidField {
        param: &'static str,
        message: String,
    },
    /// `model` names no configured alias.
    ModelNotFound(String),
    /// The request body exceeds `server.max_body_bytes`.
    BodyTooLarge { limit: usize },
    /// Too many request header fields, or a header section too large to parse.
    HeadersTooLarge,
    /// A request header that is not valid HTTP.
    MalformedRequest,
    /// No route exists for this method and path.
    NotFound,
    /// The method is not allowed on this path.
    MethodNotAllowed,
    /// No passthrough provider is configured for a non-LLM `/v1/*` path.
    NoPassthrough,
    /// The provider could not be reached (connect refused, reset, TLS failure, DNS).
    UpstreamUnreachable { provider: String, detail: String },
    /// The provider did not answer in time (connect, first byte, idle or total timeout).
    UpstreamTimeout {
        provider: String,
        which: &'static str,
    },
    /// The provider answered with something that is not HTTP we can relay.
    UpstreamProtocol { provider: String, detail: String },
    /// The gateway is shutting down and no longer takes this request.
    ShuttingDown,
    /// The usage sink is backed up: the request is refused before reaching a provider.
    Backpressure,
    /// The client closed the connection before the request was complete.
    ClientClosed,
    /// No usable credential (missing, malformed, unknown, revoked or expired).
    Unauthenticated(crate::auth::AuthFailure),
    /// The principal may not do this.
    PermissionDenied(String),
    /// A rate limit, token limit, concurrency limit or budget refused the request.
    Limited(Box<crate::limits::Refusal>),
    /// A refusal of its own kind (workflows: unknown workflow, too many runs in flight).
    Refused {
        status: u16,
        code: &'static str,
        message: String,
    },
}

impl GatewayError {
    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidJson(_) | Self::InvalidField { .. } | Self::MalformedRequest => 400,
            Self::HeadersTooLarge => 431,
            Self::ModelNotFound(_) | Self::NotFound | Self::NoPassthrough => 404,
            Self::MethodNotAllowed => 405,
            Self::BodyTooLarge { .. } => 413,
            Self::UpstreamUnreachable { .. } | Self::UpstreamProtocol { .. } => 502,
            Self::ShuttingDown | Self::Backpressure => 503,
            Self::ClientClosed => 499,
            Self::Unauthenticated(_) => 401,
            Self::PermissionDenied(_) => 403,
            Self::UpstreamTimeout { .. } => 504,
            Self::Limited(_) => 429,
            Self::Refused { status, .. } => *status,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidField { .. }
            | Self::ModelNotFound(_)
            | Self::BodyTooLarge { .. }
            | Self::HeadersTooLarge
            | Self::MalformedRequest
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::NoPassthrough
            | Self::ClientClosed
            | Self::Unauthenticated(_) => "invalid_request_error",
            Self::PermissionDenied(_) => "permission_error",
            Self::Limited(r) if r.kind == crate::limits::Kind::Budget => "insufficient_quota",
            Self::Limited(r) if r.kind == crate::limits::Kind::Tokens => "tokens",
            Self::Limited(_) => "requests",
            Self::Refused { status: 429, .. } => "requests",
            Self::Refused { status, .. } if *status < 500 => "invalid_request_error",
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamProtocol { .. }
            | Self::ShuttingDown
            | Self::Refused { .. }
            | Self::Backpressure => "api_error",
        }
    }

    /// OpenAI's `error.code`; also the bounded `reason` label in metrics and the usage record.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidField { .. } => "invalid_request_error",
            Self::ModelNotFound(_) => "model_not_found",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::HeadersTooLarge => "request_header_fields_too_large",
            Self::MalformedRequest => "malformed_request",
            Self::NotFound | Self::NoPassthrough => "unknown_url",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamProtocol { .. } => "upstream_protocol_error",
            Self::ShuttingDown => "shutting_down",
            Self::Backpressure => "usage_backpressure",
            Self::ClientClosed => "client_closed_request",
            Self::Unauthenticated(_) => "invalid_api_key",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Limited(r) => r.kind.code(),
            Self::Refused { code, .. } => code,
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidField { param, .. } => Some(param),
            Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// Human-readable message; never contains credentials.
    pub fn message(&self) -> String {
        match self {
            Self::InvalidJson(d) => {
                format!("We could not parse the JSON body of your request: {d}")
            }
            Self::InvalidField { message, .. } => message.clone(),
            Self::ModelNotFound(m) => {
                format!("The model `{m}` does not exist or you do not have access to it.")
            }
            Self::BodyTooLarge { limit } => {
                format!("Request body exceeds the gateway limit of {limit} bytes.")
            }
            Self::HeadersTooLarge => {
                "The request has too many header fields, or they are too large.".to_string()
            }
            Self::MalformedRequest => "The request header is not valid HTTP.".to_string(),
            Self::NotFound => "Unknown request URL.".to_string(),
            Self::MethodNotAllowed => "Method not allowed on this URL.".to_string(),
            Self::NoPassthrough => {
                "Unknown request URL, and no passthrough provider is configured.".to_string()
            }
            Self::UpstreamUnreachable { provider, detail } => {
                format!("Provider `{provider}` is unreachable: {detail}")
            }
            Self::UpstreamTimeout { provider, which } => {
                format!("Provider `{provider}` timed out ({which}).")
            }
            Self::UpstreamProtocol { provider, detail } => {
                format!("Provider `{provider}` sent an invalid response: {detail}")
            }
            Self::ShuttingDown => "The gateway is shutting down; retry.".to_string(),
            Self::Backpressure => {
                "The gateway is busy recording usage; retry in a moment.".to_string()
            }
            Self::ClientClosed => "The client closed the request.".to_string(),
            // One message for unknown, revoked and expired keys: no oracle for key probing.
            Self::Unauthenticated(crate::auth::AuthFailure::Missing) => {
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
                    .to_string()
            }
            Self::Unauthenticated(_) => "Incorrect API key provided.".to_string(),
            Self::PermissionDenied(m) => m.clone(),
            Self::Limited(r) => r.message.clone(),
            Self::Refused { message, .. } => message.clone(),
        }
    }

    /// `{"error":{"message","type","param","code"}}`, as the OpenAI SDKs expect.
    pub fn body(&self) -> Vec<u8> {
        let mut s = String::with_capacity(160);
        s.push_str("{\"error\":{\"message\":");
        json_string(&mut s, &self.message());
        let _ = write!(s, ",\"type\":\"{}\",\"param\":", self.error_type());
        match self.param() {
            Some(p) => {
                let _ = write!(s, "\"{p}\"");
            }
            None => s.push_str("null"),
        }
        let _ = write!(s, ",\"code\":\"{}\"}}}}", self.code());
        s.into_bytes()
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for GatewayError {}

/// Appends `v` as a JSON string literal.
pub fn json_string(out: &mut String, v: &str) {
    // serde_json's escaping is correct for all of Unicode; writing into a String cannot fail.
    out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::ModelNotFound("gpt-\"x".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-\"x"));
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        let t = GatewayError::UpstreamTimeout {
            provider: "p".into(),
            which: "first byte",
        };
        assert_eq!(t.status(), 504);
        let v: serde_json::Value = serde_json::from_slice(&t.body()).unwrap();
        assert!(v["error"]["param"].is_null());
    }
}
