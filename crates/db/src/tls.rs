//! TLS to PostgreSQL in libpq's terms, with rustls: `sslmode` and the CA (`sslrootcert`), from
//! the config keys or from `database.url`'s query. Owns only the client's TLS settings; opening
//! connections is [`crate::pool`]'s job.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` (`allow` aside: tokio-postgres cannot try plain first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, plain when it refuses. Without a CA the certificate is not
    /// verified; with one its chain is (as `verify-ca`), and a failure fails the connection.
    Prefer,
    /// TLS or no connection. Without a CA the certificate is not verified (encrypted, but open
    /// to an active man in the middle); with one its chain is (as `verify-ca`).
    Require,
    /// TLS, the chain verified against the CA; any host name accepted.
    VerifyCa,
    /// TLS, the chain verified against the CA and the certificate issued for the host.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err("sslmode `allow` is not supported (use `prefer`)".into()),
            other => Err(format!(
                "unknown sslmode `{other}` (expected disable, prefer, require, verify-ca or verify-full)"
            )),
        }
    }
}

/// Where the CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaSource {
    /// A PEM file of one or more certificates.
    File(PathBuf),
    /// The platform's trust store (libpq's `sslrootcert=system`).
    System,
}

impl CaSource {
    fn parse(value: &Path) -> Self {
        if value == Path::new("system") {
            Self::System
        } else {
            Self::File(value.to_path_buf())
        }
    }
}

/// The TLS parameters `database.url` carried, taken out of it: tokio-postgres refuses
/// `verify-ca`, `verify-full` and `sslrootcert`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlTls {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off the query of a `postgres://`/`postgresql://` URL
/// (percent-decoded; the last occurrence wins, as in libpq). Other connection strings are
/// returned unchanged.
pub(crate) fn split_url(url: &str) -> (String, UrlTls) {
    let mut found = UrlTls::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_string(), found);
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        };
        match key {
            "sslmode" => found.sslmode = Some(decoded()),
            "sslrootcert" => found.sslrootcert = Some(decoded()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, found)
}

/// The TLS a connection uses: a mode and, when given, the CA and the setting that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub mode: SslMode,
    pub ca: Option<CaSource>,
    /// The setting the CA came from, for error messages.
    ca_key: &'static str,
}

impl TlsSettings {
    /// The explicit keys (`database.sslmode`, `database.ca_file`) win over the URL's
    /// parameters; with neither the mode is `prefer`, or `verify-full` with the system's roots
    /// (libpq: weaker modes are refused there, as the public roots prove nothing without the
    /// host name). `verify-ca` and `verify-full` need a CA.
    pub(crate) fn resolve(
        mode: Option<SslMode>,
        ca_file: Option<&Path>,
        url: &UrlTls,
    ) -> Result<Self, String> {
        let url_mode = match &url.sslmode {
            Some(value) => Some(
                value
                    .parse::<SslMode>()
                    .map_err(|e| format!("database.url: {e}"))?,
            ),
            None => None,
        };
        let (ca, ca_key) = match (ca_file, &url.sslrootcert) {
            (Some(path), _) => (Some(CaSource::parse(path)), "database.ca_file"),
            (None, Some(path)) => (
                Some(CaSource::parse(Path::new(path))),
                "sslrootcert in database.url",
            ),
            (None, None) => (None, "database.ca_file"),
        };
        let system = ca == Some(CaSource::System);
        let mode = mode.or(url_mode).unwrap_or(if system {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        });
        if system && mode != SslMode::VerifyFull {
            return Err(format!(
                "database.sslmode: `system` roots ({ca_key}) need sslmode verify-full, not {mode}"
            ));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && ca.is_none() {
            return Err(format!(
                "database.sslmode {mode} needs a CA to verify the server with: set \
                 database.ca_file (a PEM file, or `system` for the platform's roots) or \
                 sslrootcert in database.url"
            ));
        }
        Ok(Self { mode, ca, ca_key })
    }

    /// What tokio-postgres negotiates; verification is in the rustls config.
    pub(crate) fn negotiation(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The TLS connector; reads the CA now (once per pool or connection). With `disable` it
    /// is never used and reads nothing.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?;
        let roots = match (&self.ca, self.mode) {
            (_, SslMode::Disable) | (None, _) => None,
            (Some(ca), _) => Some(Arc::new(self.roots(ca)?)),
        };
        let config = match roots {
            Some(roots) if self.mode == SslMode::VerifyFull => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            roots => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, algorithms }))
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self, ca: &CaSource) -> Result<RootCertStore, String> {
        let key = self.ca_key;
        let mut roots = RootCertStore::empty();
        match ca {
            CaSource::File(path) => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{key}: cannot read CA certificates from {shown}: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("{key}: no PEM certificate in {shown}"));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{key}: a certificate in {shown}: {e}"))?;
                }
            }
            CaSource::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                    return Err(format!(
                        "{key}: no certificate in the platform's trust store ({})",
                        errors.join("; ")
                    ));
                }
            }
        }
        Ok(roots)
    }
}

/// `require`/`prefer` without a CA (any certificate) and `verify-ca` or `require`/`prefer`
/// with one (the chain to a root, any host name). The handshake signatures are always checked,
/// so the server holds the key of the certificate it showed.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(sslmode: Option<&str>, sslrootcert: Option<&str>) -> UrlTls {
        UrlTls {
            sslmode: sslmode.map(String::from),
            sslrootcert: sslrootcert.map(String::from),
        }
    }

    #[test]
    fn sslmode_parses_libpq_names_only() {
        assert_eq!("disable".parse(), Ok(SslMode::Disable));
        assert_eq!("prefer".parse(), Ok(SslMode::Prefer));
        assert_eq!("require".parse(), Ok(SslMode::Require));
        assert_eq!("verify-ca".parse(), Ok(SslMode::VerifyCa));
        assert_eq!("verify-full".parse(), Ok(SslMode::VerifyFull));
        assert!("allow".parse::<SslMode>().unwrap_err().contains("prefer"));
        assert!("Verify-Full".parse::<SslMode>().is_err());
        assert!("verify_full".parse::<SslMode>().is_err());
    }

    #[test]
    fn sslmode_deserializes_from_config_text() {
        #[derive(Deserialize)]
        struct Section {
            sslmode: SslMode,
        }
        let parsed: Section = serde_json::from_str(r#"{"sslmode":"verify-full"}"#).unwrap();
        assert_eq!(parsed.sslmode, SslMode::VerifyFull);
        assert!(serde_json::from_str::<Section>(r#"{"sslmode":"verify"}"#).is_err());
    }

    #[test]
    fn url_tls_parameters_are_taken_out_and_the_rest_kept_in_order() {
        let (rest, tls) = split_url(
            "postgresql://u:p@db.example.supabase.co:5432/postgres?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fsupabase%20ca.crt&options=-c%20a%3Db",
        );
        assert_eq!(
            rest,
            "postgresql://u:p@db.example.supabase.co:5432/postgres?application_name=x&options=-c%20a%3Db"
        );
        assert_eq!(tls, url(Some("verify-full"), Some("/etc/supabase ca.crt")));
        // tokio-postgres accepts what is left.
        assert!(tokio_postgres::Config::from_str(&rest).is_ok());
    }

    #[test]
    fn url_without_tls_parameters_is_unchanged() {
        for original in [
            "postgres://postgres:postgres@127.0.0.1:54322/postgres",
            "postgres://h/db?application_name=a",
            "host=localhost sslmode=require",
        ] {
            assert_eq!(
                split_url(original),
                (original.to_string(), UrlTls::default())
            );
        }
        let (rest, tls) = split_url("postgres://h/db?sslmode=require");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(tls, url(Some("require"), None));
    }

    #[test]
    fn the_last_repeated_parameter_wins() {
        let (_, tls) = split_url("postgres://h/db?sslmode=disable&sslmode=verify-ca");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
    }

    #[test]
    fn defaults_to_prefer_without_a_ca() {
        let tls = TlsSettings::resolve(None, None, &UrlTls::default()).unwrap();
        assert_eq!((tls.mode, tls.ca.clone()), (SslMode::Prefer, None));
        assert_eq!(tls.negotiation(), tokio_postgres::config::SslMode::Prefer);
    }

    #[test]
    fn explicit_keys_win_over_the_url() {
        let from_url = url(Some("disable"), Some("/url/ca.pem"));
        let tls = TlsSettings::resolve(
            Some(SslMode::VerifyFull),
            Some(Path::new("/key/ca.pem")),
            &from_url,
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.ca, Some(CaSource::File("/key/ca.pem".into())));

        let tls = TlsSettings::resolve(None, None, &from_url).unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(tls.ca, Some(CaSource::File("/url/ca.pem".into())));
        assert_eq!(tls.negotiation(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn verifying_modes_need_a_ca_and_the_error_names_the_key() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let error = TlsSettings::resolve(Some(mode), None, &UrlTls::default()).unwrap_err();
            assert!(error.contains("database.ca_file"), "{error}");
        }
        let error = TlsSettings::resolve(None, None, &url(Some("verify-full"), None)).unwrap_err();
        assert!(error.contains("database.ca_file"), "{error}");
        let tls = TlsSettings::resolve(Some(SslMode::Require), None, &UrlTls::default()).unwrap();
        assert_eq!(tls.negotiation(), tokio_postgres::config::SslMode::Require);
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let tls =
                TlsSettings::resolve(Some(mode), Some(Path::new("/ca.pem")), &UrlTls::default())
                    .unwrap();
            assert_eq!(tls.negotiation(), tokio_postgres::config::SslMode::Require);
        }
    }

    #[test]
    fn a_bad_url_sslmode_names_the_url() {
        let error = TlsSettings::resolve(None, None, &url(Some("allow"), None)).unwrap_err();
        assert!(error.starts_with("database.url"), "{error}");
        // An explicit key does not make a bad URL value acceptable.
        assert!(TlsSettings::resolve(Some(SslMode::Require), None, &url(Some("x"), None)).is_err());
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let tls =
            TlsSettings::resolve(None, Some(Path::new("system")), &UrlTls::default()).unwrap();
        assert_eq!(
            (tls.mode, tls.ca.clone()),
            (SslMode::VerifyFull, Some(CaSource::System))
        );
        let error = TlsSettings::resolve(
            Some(SslMode::Require),
            Some(Path::new("system")),
            &UrlTls::default(),
        )
        .unwrap_err();
        assert!(error.contains("verify-full"), "{error}");
    }

    #[test]
    fn an_unreadable_ca_file_is_a_config_error_naming_the_key() {
        let tls = TlsSettings::resolve(
            Some(SslMode::VerifyFull),
            Some(Path::new("/nonexistent/ca.pem")),
            &UrlTls::default(),
        )
        .unwrap();
        let error = tls.connector().err().unwrap();
        assert!(error.starts_with("database.ca_file"), "{error}");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");

        let tls = TlsSettings::resolve(None, None, &url(Some("verify-ca"), Some("/nonexistent")))
            .unwrap();
        let error = tls.connector().err().unwrap();
        assert!(error.starts_with("sslrootcert in database.url"), "{error}");
    }

    #[test]
    fn disable_reads_no_ca() {
        let tls = TlsSettings::resolve(
            Some(SslMode::Disable),
            Some(Path::new("/nonexistent/ca.pem")),
            &UrlTls::default(),
        )
        .unwrap();
        assert!(tls.connector().is_ok());
    }
}
