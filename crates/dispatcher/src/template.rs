//! Message templates for chat sinks: `{{purchase.amount}}` is replaced by that field of the
//! event (JSON), strings unquoted, missing fields empty. Field references are checked against
//! the schema when a rule is saved (substrate-rules).

use serde_json::Value;

/// Fills `template` from `event`.
pub fn render(template: &str, event: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let path = after[..end].trim();
        let mut current = Some(event);
        for key in path.split('.') {
            current = current.and_then(|v| v.get(key));
        }
        match current {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fills_fields() {
        let event = json!({"user": {"email": "vip@example.com", "country": null}, "purchase": {"amount": 750.5, "items": 3}});
        assert_eq!(
            render("VIP {{user.email}} spent {{ purchase.amount }} on {{purchase.items}} items{{user.country}}", &event),
            "VIP vip@example.com spent 750.5 on 3 items"
        );
        assert_eq!(render("no fields", &event), "no fields");
        assert_eq!(render("broken {{user.email", &event), "broken {{user.email");
        assert_eq!(render("{{missing.field}}!", &event), "!");
    }
}
