//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, one entry per secret (several during rotation), secrets written
//! `whsec_<base64>`. Verification (for tests and receivers in Rust) checks the timestamp window
//! and compares in constant time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Receivers reject timestamps further than this from their clock.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("a secret must be `whsec_` followed by base64")]
    BadSecret,
    #[error("the timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// A decoded `whsec_` secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let encoded = text.strip_prefix("whsec_").ok_or(SigningError::BadSecret)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SigningError::BadSecret)?;
        if bytes.is_empty() {
            return Err(SigningError::BadSecret);
        }
        Ok(Self(bytes))
    }

    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` value: `v1,<sig>` for each secret, space-separated.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", STANDARD.encode(s.sign(id, timestamp, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a delivery as a receiver would.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
) -> Result<(), SigningError> {
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(SigningError::Stale);
    }
    let expected = secret.sign(id, timestamp, body);
    let matched = header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .any(|sig| bool::from(sig.as_slice().ct_eq(&expected)));
    if matched {
        Ok(())
    } else {
        Err(SigningError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specification_example() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(
            std::slice::from_ref(&secret),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            verify(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body,
                &header,
                1614265400
            ),
            Ok(())
        );
    }

    #[test]
    fn rotation_tampering_and_staleness() {
        let old = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let new = Secret::parse("whsec_dGhpcyBpcyBhIG5ldyBzZWNyZXQgb2YgMzIgYnl0ZXM=").unwrap();
        let header = signature_header(&[new.clone(), old.clone()], "id", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&old, "id", 100, b"{}", &header, 100).is_ok());
        assert!(verify(&new, "id", 100, b"{}", &header, 100).is_ok());
        assert_eq!(
            verify(&old, "id", 100, b"{ }", &header, 100),
            Err(SigningError::Mismatch)
        );
        assert_eq!(
            verify(&old, "other", 100, b"{}", &header, 100),
            Err(SigningError::Mismatch)
        );
        assert_eq!(
            verify(&old, "id", 100, b"{}", &header, 100 + 301),
            Err(SigningError::Stale)
        );
        assert!(Secret::parse("MfKQ9r8").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
    }
}
