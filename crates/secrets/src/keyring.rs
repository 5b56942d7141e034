//! AES-256-GCM sealing under a keyring from configuration. Each secret gets a random 96-bit
//! nonce and associated data naming what it belongs to, so a ciphertext moved to another row
//! does not open; the key id is stored beside it, so keys rotate: the active key seals, every
//! configured key opens. Errors never contain key material or plaintext.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a GCM nonce.
pub const NONCE_BYTES: usize = 12;

/// The `secrets` section of a configuration.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// `id:base64(32 bytes)` entries: a list, or one string of comma-separated entries (the
    /// environment form, `SUBSTRATE_SECRETS__KEYS=k2:…,k1:…`).
    #[serde(default, deserialize_with = "list_or_commas")]
    pub keys: Vec<String>,
    /// The key that seals; the first of `keys` when unset.
    #[serde(default)]
    pub active_key_id: Option<String>,
}

impl fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.split_once(':').map_or("?", |(id, _)| id))
            .collect();
        f.debug_struct("SecretsConfig")
            .field("keys", &ids)
            .field("active_key_id", &self.active_key_id)
            .finish()
    }
}

fn list_or_commas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(deserializer)? {
        Form::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Form::Many(list) => list,
    })
}

/// A configuration the keyring cannot be built from; names the key (`secrets.keys`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {message}")]
pub struct KeyringError {
    pub key: String,
    pub message: String,
}

impl KeyringError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl SecretsConfig {
    /// The keyring; `prefix` is the section's name in error messages (`secrets`).
    pub fn keyring(&self, prefix: &str) -> Result<Keyring, KeyringError> {
        let keys_key = format!("{prefix}.keys");
        if self.keys.is_empty() {
            return Err(KeyringError::new(
                &keys_key,
                "no key configured: give at least one `id:base64(32 bytes)` entry",
            ));
        }
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::with_capacity(self.keys.len());
        for (index, entry) in self.keys.iter().enumerate() {
            let bad = |m: &str| KeyringError::new(&keys_key, format!("entry {index}: {m}"));
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| bad("must be `id:base64(32 bytes)`"))?;
            if !is_key_id(id) {
                return Err(bad(
                    "the id must be 1-64 characters of letters, digits, `.`, `_` or `-`",
                ));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(bad(&format!("key id `{id}` appears twice")));
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| bad("the key is not base64"))?,
            );
            if bytes.len() != KEY_BYTES {
                return Err(bad(&format!(
                    "the key must be {KEY_BYTES} bytes, not {}",
                    bytes.len()
                )));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).expect("the length was checked");
            keys.push((id.to_string(), cipher));
        }
        let active = match &self.active_key_id {
            None => 0,
            Some(id) => keys.iter().position(|(k, _)| k == id).ok_or_else(|| {
                KeyringError::new(
                    &format!("{prefix}.active_key_id"),
                    format!("`{id}` is not one of the ids in {keys_key}"),
                )
            })?,
        };
        Ok(Keyring { keys, active })
    }
}

fn is_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A new random key as a `secrets.keys` entry (`id:base64`).
pub fn generate_key_entry(id: &str) -> Result<String, KeyringError> {
    if !is_key_id(id) {
        return Err(KeyringError::new(
            "id",
            "must be 1-64 characters of letters, digits, `.`, `_` or `-`",
        ));
    }
    let key = Aes256Gcm::generate_key(OsRng);
    Ok(format!("{id}:{}", STANDARD.encode(key)))
}

/// What is stored for one secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .finish()
    }
}

/// Why a sealed secret does not open. Both are permanent for that row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the secret is sealed with key `{0}`, which is not configured (secrets.keys)")]
    UnknownKey(String),
    #[error(
        "the sealed secret does not authenticate under key `{0}`: its ciphertext, nonce or \
         binding (rule, version, action) was altered"
    )]
    Tampered(String),
}

/// The configured keys; the active one seals.
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
    active: usize,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.key_ids().collect::<Vec<_>>())
            .field("active", &self.active_key_id())
            .finish()
    }
}

impl Keyring {
    pub fn active_key_id(&self) -> &str {
        &self.keys[self.active].0
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Seals `plaintext` with the active key, a fresh random nonce and `aad` as associated
    /// data (which must be given again to open it).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let (id, cipher) = &self.keys[self.active];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of a bounded message cannot fail");
        Sealed {
            key_id: id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens a sealed secret with the key it names.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; NONCE_BYTES] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| OpenError::Tampered(sealed.key_id.clone()))?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Tampered(sealed.key_id.clone()))
    }

    /// Opens with whichever key sealed it and seals again with the active key (rotation).
    pub fn reseal(&self, sealed: &Sealed, aad: &[u8]) -> Result<Sealed, OpenError> {
        let plaintext = self.open(sealed, aad)?;
        Ok(self.seal(&plaintext, aad))
    }
}

/// The associated data binding an action's secret to its rule, rule version and action index.
pub fn action_aad(rule_id: &uuid::Uuid, rule_version: i32, action_index: i32) -> Vec<u8> {
    format!("substrate.action_secret.v1/{rule_id}/{rule_version}/{action_index}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> SecretsConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn two_keys() -> (String, String) {
        (
            generate_key_entry("k1").unwrap(),
            generate_key_entry("k2").unwrap(),
        )
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let (k1, _) = two_keys();
        let ring = config(&format!("keys: [\"{k1}\"]"))
            .keyring("secrets")
            .unwrap();
        let aad = action_aad(&uuid::Uuid::nil(), 3, 1);
        let a = ring.seal(b"whsec_abc", &aad);
        let b = ring.seal(b"whsec_abc", &aad);
        assert_eq!(a.key_id, "k1");
        assert_eq!(a.nonce.len(), NONCE_BYTES);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a
            .ciphertext
            .windows(b"whsec_abc".len())
            .any(|w| w == b"whsec_abc"));
        assert_eq!(&ring.open(&a, &aad).unwrap()[..], b"whsec_abc");
        assert!(!format!("{a:?}").contains("whsec"));
    }

    #[test]
    fn a_key_that_is_not_configured_does_not_open() {
        let (k1, k2) = two_keys();
        let sealer = config(&format!("keys: [\"{k2}\"]"))
            .keyring("secrets")
            .unwrap();
        let opener = config(&format!("keys: [\"{k1}\"]"))
            .keyring("secrets")
            .unwrap();
        let sealed = sealer.seal(b"secret", b"aad");
        assert_eq!(
            opener.open(&sealed, b"aad"),
            Err(OpenError::UnknownKey("k2".into()))
        );
        // The same id with other key bytes is a tampering failure, not a silent success.
        let (other_k2, _) = (generate_key_entry("k2").unwrap(), ());
        let impostor = config(&format!("keys: [\"{other_k2}\"]"))
            .keyring("secrets")
            .unwrap();
        assert_eq!(
            impostor.open(&sealed, b"aad"),
            Err(OpenError::Tampered("k2".into()))
        );
    }

    #[test]
    fn tampered_ciphertext_nonce_or_swapped_binding_do_not_open() {
        let (k1, _) = two_keys();
        let ring = config(&format!("keys: [\"{k1}\"]"))
            .keyring("secrets")
            .unwrap();
        let rule = uuid::Uuid::new_v4();
        let aad = action_aad(&rule, 2, 0);
        let sealed = ring.seal(b"https://hooks.slack.com/services/T/B/X", &aad);

        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(
            ring.open(&flipped, &aad),
            Err(OpenError::Tampered(_))
        ));
        let mut nonce = sealed.clone();
        nonce.nonce[11] ^= 1;
        assert!(matches!(
            ring.open(&nonce, &aad),
            Err(OpenError::Tampered(_))
        ));
        let mut short = sealed.clone();
        short.nonce.truncate(4);
        assert!(matches!(
            ring.open(&short, &aad),
            Err(OpenError::Tampered(_))
        ));
        // Another rule, version or action index: the row was moved.
        for other in [
            action_aad(&uuid::Uuid::new_v4(), 2, 0),
            action_aad(&rule, 3, 0),
            action_aad(&rule, 2, 1),
        ] {
            assert!(matches!(
                ring.open(&sealed, &other),
                Err(OpenError::Tampered(_))
            ));
        }
        let error = ring.open(&flipped, &aad).unwrap_err().to_string();
        assert!(!error.contains("hooks.slack.com"), "{error}");
    }

    #[test]
    fn rotation_reseals_with_the_active_key_and_old_keys_still_open() {
        let (k1, k2) = two_keys();
        let old = config(&format!("keys: [\"{k1}\"]"))
            .keyring("secrets")
            .unwrap();
        let sealed = old.seal(b"secret", b"aad");
        // The environment form: comma-separated, the new key first.
        let rotated = config(&format!("keys: \"{k2}, {k1}\""))
            .keyring("secrets")
            .unwrap();
        assert_eq!(rotated.active_key_id(), "k2");
        assert_eq!(&rotated.open(&sealed, b"aad").unwrap()[..], b"secret");
        let resealed = rotated.reseal(&sealed, b"aad").unwrap();
        assert_eq!(resealed.key_id, "k2");
        assert_eq!(&rotated.open(&resealed, b"aad").unwrap()[..], b"secret");
        // active_key_id picks another key than the first.
        let pinned = config(&format!("keys: [\"{k2}\", \"{k1}\"]\nactive_key_id: k1"))
            .keyring("secrets")
            .unwrap();
        assert_eq!(pinned.seal(b"x", b"").key_id, "k1");
    }

    #[test]
    fn bad_configuration_names_the_key_and_shows_no_key_material() {
        let (k1, _) = two_keys();
        let material = k1.split_once(':').unwrap().1.to_string();
        for (yaml, key, fragment) in [
            ("{}".to_string(), "secrets.keys", "no key configured"),
            ("keys: [\"nocolon\"]".into(), "secrets.keys", "id:base64"),
            ("keys: [\"k1:!!!\"]".into(), "secrets.keys", "not base64"),
            (
                "keys: [\"k1:AAAA\"]".into(),
                "secrets.keys",
                "32 bytes, not 3",
            ),
            (
                format!("keys: [\"bad id:{material}\"]"),
                "secrets.keys",
                "the id must be",
            ),
            (
                format!("keys: [\"{k1}\", \"{k1}\"]"),
                "secrets.keys",
                "appears twice",
            ),
            (
                format!("keys: [\"{k1}\"]\nactive_key_id: k9"),
                "secrets.active_key_id",
                "`k9` is not one of",
            ),
        ] {
            let error = config(&yaml).keyring("secrets").unwrap_err();
            assert_eq!(error.key, key, "{yaml}");
            assert!(error.message.contains(fragment), "{yaml}: {error}");
            assert!(!error.to_string().contains(&material));
        }
        let shown = format!("{:?}", config(&format!("keys: [\"{k1}\"]")));
        assert!(
            shown.contains("k1") && !shown.contains(&material),
            "{shown}"
        );
    }
}
