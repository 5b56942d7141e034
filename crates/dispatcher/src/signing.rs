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
    if now.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
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

#[cfg(test)]
mod properties {
    //! Property tests of Standard Webhooks signing: signatures made with a secret verify with it
    //! (by the specification, written out here, and by [`verify`]) and fail with another secret
    //! or a changed message; parsing secrets and verifying arbitrary headers never panic.

    use proptest::prelude::*;
    use proptest::test_runner::Config as ProptestConfig;

    use super::*;

    /// Cases per property; failures print the shrunk input and write nothing beside the sources.
    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A receiver following the specification: HMAC-SHA256 keyed with the base64-decoded part
    /// of `whsec_…` over `{id}.{timestamp}.{body}`, base64, matched against the `v1,` entries
    /// of the space-separated header.
    fn spec_verifies(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
            .expect("base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let expected = STANDARD.encode(mac.finalize().into_bytes());
        header
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .any(|(version, signature)| version == "v1" && signature == expected)
    }

    /// `whsec_` secrets of 1 to 64 random bytes.
    fn secret_text() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<u8>(), 1..64)
            .prop_map(|bytes| format!("whsec_{}", STANDARD.encode(bytes)))
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            any::<String>().prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        /// What one secret signs verifies with that secret, per the specification and per
        /// [`verify`], and with no other secret.
        #[test]
        fn signatures_verify_with_their_secret_only(
            secret in secret_text(),
            other in secret_text(),
            id in any::<String>(),
            timestamp in any::<i64>(),
            body in body(),
        ) {
            prop_assume!(secret != other);
            let signer = Secret::parse(&secret).unwrap();
            let stranger = Secret::parse(&other).unwrap();
            let header = signature_header(std::slice::from_ref(&signer), &id, timestamp, &body);
            prop_assert!(header.starts_with("v1,") && !header.contains(' '), "{}", header);
            prop_assert!(spec_verifies(&secret, &id, timestamp, &body, &header));
            prop_assert_eq!(verify(&signer, &id, timestamp, &body, &header, timestamp), Ok(()));
            prop_assert!(!spec_verifies(&other, &id, timestamp, &body, &header));
            prop_assert_eq!(
                verify(&stranger, &id, timestamp, &body, &header, timestamp),
                Err(SigningError::Mismatch)
            );
        }

        /// During rotation the header carries one `v1,` entry per secret and each verifies; a
        /// changed body, id or timestamp verifies with none.
        #[test]
        fn every_rotated_secret_verifies_and_changes_do_not(
            secrets in prop::collection::vec(secret_text(), 1..4),
            id in any::<String>(),
            timestamp in -1_000_000_000_000i64..1_000_000_000_000,
            body in body(),
            change in 0..3u8,
            extra in any::<u8>(),
        ) {
            let parsed: Vec<Secret> = secrets.iter().map(|s| Secret::parse(s).unwrap()).collect();
            let header = signature_header(&parsed, &id, timestamp, &body);
            prop_assert_eq!(header.split(' ').count(), secrets.len());
            let (mut id2, mut timestamp2, mut body2) = (id.clone(), timestamp, body.clone());
            match change {
                0 => body2.push(extra),
                1 => id2.push(char::from(extra)),
                _ => timestamp2 += 1 + i64::from(extra),
            }
            for (text, secret) in secrets.iter().zip(&parsed) {
                prop_assert!(spec_verifies(text, &id, timestamp, &body, &header));
                prop_assert_eq!(verify(secret, &id, timestamp, &body, &header, timestamp), Ok(()));
                prop_assert!(!spec_verifies(text, &id2, timestamp2, &body2, &header));
                prop_assert_eq!(
                    verify(secret, &id2, timestamp2, &body2, &header, timestamp2),
                    Err(SigningError::Mismatch)
                );
            }
        }

        /// Parsing arbitrary text never panics and accepts exactly `whsec_` + non-empty base64.
        #[test]
        fn secret_parse_never_panics(
            text in prop_oneof![
                any::<String>(),
                any::<String>().prop_map(|s| format!("whsec_{s}")),
                "whsec_[A-Za-z0-9+/=_-]{0,24}",
                secret_text(),
                secret_text().prop_map(|s| s.trim_end_matches('=').to_string()),
            ],
        ) {
            let expected = text
                .strip_prefix("whsec_")
                .and_then(|b| STANDARD.decode(b).ok())
                .is_some_and(|bytes| !bytes.is_empty());
            match Secret::parse(&text) {
                Ok(_) => prop_assert!(expected, "{text:?} accepted"),
                Err(e) => {
                    prop_assert!(!expected, "{text:?} refused");
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }

        /// Verifying arbitrary headers at arbitrary times never panics; a timestamp more than
        /// the tolerance away is stale whatever the header says.
        #[test]
        fn verify_never_panics(
            secret in secret_text(),
            header in prop_oneof![any::<String>(), "(v1,[A-Za-z0-9+/=]{0,48} ?){0,3}"],
            timestamp in any::<i64>(),
            now in prop_oneof![any::<i64>(), Just(0), Just(i64::MIN), Just(i64::MAX)],
            body in body(),
        ) {
            let secret = Secret::parse(&secret).unwrap();
            let result = verify(&secret, "id", timestamp, &body, &header, now);
            let distance = (i128::from(now) - i128::from(timestamp)).abs();
            let stale = distance > i128::from(TOLERANCE_SECS);
            prop_assert_eq!(result == Err(SigningError::Stale), stale);
        }
    }
}
