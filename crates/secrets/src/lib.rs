//! Secrets at rest and in the open. [`keyring`] seals secrets with AES-256-GCM under a
//! configured, rotatable set of keys (the key id travels beside each ciphertext) and binds each
//! ciphertext to what it belongs to; [`redact`] is the one way a URL appears in logs, audit
//! rows, headers and metrics. No I/O: callers store and load the sealed bytes.

pub mod keyring;
pub mod redact;

pub use keyring::{
    action_aad, generate_key_entry, Keyring, KeyringError, OpenError, Sealed, SecretsConfig,
};
pub use redact::{redact_url, url_hash};
