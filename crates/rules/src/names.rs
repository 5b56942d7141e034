//! The platform's event type names: `{domain}.{entity}[.{action}]`, lowercase letters, digits
//! and `_` between dots. The one definition the gateway's routes, rule actions and notification
//! mappings check against; `user_notifications.event_type` has the same CHECK.

/// True for a namespaced event type such as `identity.login` or `media.upload_ready`.
pub fn is_event_type(name: &str) -> bool {
    let mut parts = 0;
    for part in name.split('.') {
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// The message that explains a refused name.
pub fn event_type_rule(name: &str) -> String {
    format!(
        "event_type `{name}` must be namespaced as domain.entity[.action]: lowercase letters, \
         digits and `_` between dots"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types() {
        for ok in ["identity.login", "media.upload_ready", "a.b.c", "v2.x_1"] {
            assert!(is_event_type(ok), "{ok}");
        }
        for bad in [
            "",
            "login",
            "a..b",
            ".a.b",
            "a.b.",
            "vip-purchase.x",
            "A.b",
            "a.b c",
            "a.é",
        ] {
            assert!(!is_event_type(bad), "{bad}");
        }
    }
}
