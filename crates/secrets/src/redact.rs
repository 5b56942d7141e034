//! How a URL that may carry a secret is shown: scheme, host (and an explicit port), then `/…`
//! and the first 8 hex digits of the SHA-256 of the whole URL — enough to tell endpoints apart
//! and to match a log line to a rule, never enough to call the endpoint. Paths, queries,
//! fragments and user info are never shown.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of the URL exactly as written (what `dispatch_endpoints` is keyed by).
pub fn url_hash(url: &str) -> String {
    hex(&Sha256::digest(url.as_bytes()))
}

/// `https://hooks.slack.com/…#3fa9c2d1`; `invalid-url#…` for text that is not a URL.
pub fn redact_url(url: &str) -> String {
    let short = &url_hash(url)[..8];
    match url::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…#{short}", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}/…#{short}", parsed.scheme()),
            (None, _) => format!("{}:…#{short}", parsed.scheme()),
        },
        Err(_) => format!("invalid-url#{short}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_scheme_host_and_a_short_hash_only() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX";
        let shown = redact_url(url);
        assert_eq!(
            shown,
            format!("https://hooks.slack.com/…#{}", &url_hash(url)[..8])
        );
        assert!(!shown.contains("services") && !shown.contains("XXXX"));
        assert_eq!(url_hash(url).len(), 64);
    }

    #[test]
    fn hides_user_info_query_and_fragment_and_keeps_an_explicit_port() {
        let url = "http://user:pa55word@127.0.0.1:8443/hook?token=abc#frag";
        let shown = redact_url(url);
        assert!(shown.starts_with("http://127.0.0.1:8443/…#"), "{shown}");
        for secret in ["user", "pa55word", "token", "abc", "frag", "hook"] {
            assert!(!shown.contains(secret), "{shown} shows {secret}");
        }
    }

    #[test]
    fn different_urls_on_one_host_are_told_apart() {
        let a = redact_url("https://discord.com/api/webhooks/1/aaa");
        let b = redact_url("https://discord.com/api/webhooks/1/bbb");
        assert_ne!(a, b);
        assert_eq!(a, redact_url("https://discord.com/api/webhooks/1/aaa"));
    }

    #[test]
    fn text_that_is_not_a_url_is_not_shown_either() {
        let shown = redact_url("not a url with a secret");
        assert!(shown.starts_with("invalid-url#"), "{shown}");
        assert!(!shown.contains("secret"));
    }
}
