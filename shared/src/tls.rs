//! TLS, one way for every peer: rustls with the ring crypto provider
//! (never OpenSSL). Postgres (`sslmode` / `sslrootcert` in `DATABASE_URL`),
//! Redis (`rediss://`, `REDIS_CA_FILE`), the PSP (`https://`,
//! `PSP_CA_FILE`) and the object store all go through it.
//!
//! Several crates bring rustls; with more than one crypto provider compiled
//! in, rustls cannot choose on its own and panics at the first handshake.
//! [`install_crypto_provider`] picks ring once, at the start of every
//! binary. Extra CA certificates (a private CA) come from PEM files read by
//! [`ca_bundle`], which refuses a file holding none: reqwest would accept
//! an empty bundle silently and then trust only the system's roots.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Installs ring as the process's rustls crypto provider (harmless when one
/// is installed already).
// rustls 0.23.3x marks ring's provider deprecated for its lack of
// post-quantum key exchange; aws-lc-rs would bring a C/CMake build and a
// second provider. Ring, one stack, is the choice (README, TLS).
#[allow(deprecated)]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM bundle, at least one, or a message naming the
/// setting and the file.
pub fn ca_bundle(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting}: {} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting}: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// An error with its whole source chain: reqwest, sqlx and redis keep the
/// certificate's own complaint (unknown issuer, name mismatch) in a source
/// of their error, which their `Display` leaves out.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether an error (with its chain) is a certificate that did not verify
/// or a handshake that failed, rather than a peer that cannot be reached:
/// such a failure is a configuration error to report, never an outage to
/// retry.
pub fn is_certificate_error(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "invalid peer certificate",
        "unknownissuer",
        "unknown issuer",
        "certificate",
        "notvalidforname",
        "handshake",
        "tls",
        "ssl",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_a_certificate_is_refused_naming_the_setting() {
        let dir = std::env::temp_dir().join(format!("kobatela-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "# nothing here\n").expect("write");
        let err = ca_bundle("PSP_CA_FILE", &empty).expect_err("refused");
        assert!(err.contains("PSP_CA_FILE") && err.contains("no certificate"), "{err}");
        let missing = ca_bundle("REDIS_CA_FILE", &dir.join("missing.pem")).expect_err("refused");
        assert!(missing.contains("REDIS_CA_FILE") && missing.contains("cannot read"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
