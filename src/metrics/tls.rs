//! Certificate expiry as a metric: the alert "certificate expiring" reads
//! `model_bridge_tls_cert_not_after_seconds - time()`.

use super::METRICS;
use std::path::Path;

/// `notAfter` of the first (leaf) certificate in a PEM chain, Unix seconds.
pub fn leaf_not_after(pem: &[u8]) -> Result<i64, String> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem)
        .next()
        .ok_or("no PEM block")?
        .map_err(|e| format!("PEM: {e}"))?;
    let cert = block.parse_x509().map_err(|e| format!("X.509: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Sets the gauge for `listener` from the certificate file; logs (and leaves the gauge
/// absent) when it cannot be read — the listener itself then fails to start with the reason.
pub fn observe_cert(listener: &str, path: &Path) {
    match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|pem| leaf_not_after(&pem))
    {
        Ok(t) => METRICS
            .tls_cert_not_after
            .with_label_values(&[listener])
            .set(t),
        Err(e) => log::warn!(
            "TLS certificate {}: cannot read its expiry: {e}",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert!(leaf_not_after(b"").is_err());
        assert!(
            leaf_not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
