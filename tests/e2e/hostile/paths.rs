//! Route names and unknown paths and methods on both listeners.

use super::*;

// ---------------------------------------------------------------------------------------------
// Route names and unknown paths
// ---------------------------------------------------------------------------------------------

/// Percent-encodes every byte but ASCII letters, digits and `-._~`.
pub(super) fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A `{route}` segment as it appears in the request target.
pub(super) fn route_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>().prop_map(|s| percent_encode(s.as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| percent_encode(&b)),
        1 => "[a-z]{0,12}",
        1 => (1usize..6_000).prop_map(|n| "a".repeat(n)),
        2 => select(vec![
            "", ".", "..", "%2e%2e", "%2E", "%FF", "%C0%AF", "%ED%A0%80", "%00", "message%00", "%",
            "%zz", "%%", "%2", "mess%61ge", "MESSAGE", "message%2Fbatch", "..%2F..%2Fetc%2Fpasswd",
            "~", "message;x=1", "message.json", "%20message", "message%20", "purchase", "message",
            "%F0%9F%98%80", "%EF%BB%BFmessage",
        ])
        .prop_map(String::from),
    ]
}

#[test]
pub(super) fn route_names_in_the_path_are_json_refusals() {
    let edge = edge();
    let token = edge.token();
    let event = json!({"message": "m", "visibility": "broadcast"}).to_string();
    let suffix = select(vec![
        "", "/batch", "/", "/batch/", "/batch/x", "//batch", "/x/y", "?q=1",
    ]);
    property(
        "route names",
        256,
        (route_segment(), suffix),
        |(segment, suffix)| {
            let head = format!(
            "POST /api/v1/events/{segment}{suffix} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}",
            event.len()
        );
            runtime().block_on(async {
                let answer = raw(&edge.addr, head.as_bytes()).await?;
                // The routes of this gateway answer for themselves (400 for a batch that is no
                // array, 401 for `purchase` without its key); any other name is unknown.
                let body = check(&answer, &[202, 400, 401, 404])?;
                let decoded = percent_decode(&segment);
                let known = decoded
                    .as_deref()
                    .is_some_and(|name| ["message", "purchase"].contains(&name));
                if !known {
                    prop_assert_eq!(answer.status, 404, "{:?}", answer);
                }
                if answer.status == 404 {
                    prop_assert!(
                        ["unknown_route", "not_found"].contains(&code(&body)),
                        "{:?}",
                        answer
                    );
                }
                Ok(())
            })
        },
    );
    runtime().block_on(edge.alive());
}

/// The route name axum hands the handler, when the segment decodes to UTF-8.
pub(super) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Paths of a listener with the methods they take.
pub(super) const GATEWAY_PATHS: &[(&str, &[&str])] = &[
    ("/api/v1/events/message", &["POST"]),
    ("/api/v1/events/message/batch", &["POST"]),
    ("/webhooks/login", &["POST"]),
    ("/api/v1/media/upload-intent", &["POST"]),
    ("/api/v1/media/upload-complete", &["POST"]),
    ("/api/v1/credits", &["GET", "HEAD"]),
    ("/api/v1/media/files", &["GET", "HEAD"]),
    ("/healthz", &["GET", "HEAD"]),
];

pub(super) const SAGA_PATHS: &[(&str, &[&str])] = &[
    ("/webhooks/media-upload", &["POST"]),
    ("/webhooks/file-ready", &["POST"]),
    ("/healthz", &["GET", "HEAD"]),
    ("/readyz", &["GET", "HEAD"]),
    ("/metrics", &["GET", "HEAD"]),
];

/// The methods `path` takes on a listener with `paths` (and the event routes on the gateway).
pub(super) fn served(
    paths: &[(&str, &'static [&'static str])],
    path: &str,
    gateway: bool,
) -> &'static [&'static str] {
    if let Some((_, methods)) = paths.iter().find(|(p, _)| *p == path) {
        return methods;
    }
    let event_route = path.strip_prefix("/api/v1/events/").is_some_and(|rest| {
        let rest = rest.strip_suffix("/batch").unwrap_or(rest);
        !rest.is_empty() && !rest.contains('/')
    });
    if gateway && event_route {
        &["POST"]
    } else {
        &[]
    }
}

/// axum answers an unknown path with an empty 404 and a wrong method with an empty 405 unless
/// the router says otherwise: both listeners answer JSON, the 405 with `Allow`.
#[test]
pub(super) fn unknown_paths_and_methods_are_json_errors() {
    let (edge, saga) = (edge(), saga());
    let method = select(vec![
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO",
    ]);
    let path = prop_oneof![
        2 => any::<prop::sample::Index>().prop_map(|i| i.index(8)).prop_map(Some),
        1 => Just(None),
    ];
    let unknown = prop_oneof![
        "/[a-z0-9/._~-]{0,40}",
        Just("/api/v1/events".to_string()),
        Just("/api/v1/events/".to_string()),
        Just("/api/v1/events/message/batch/x".to_string()),
        Just("/webhooks".to_string()),
        Just("/webhooks/login/".to_string()),
        any::<String>().prop_map(|s| format!("/{}", percent_encode(s.as_bytes()))),
    ];
    property(
        "unknown paths and methods",
        128,
        (any::<bool>(), method, path, unknown),
        |(on_saga, method, known, unknown)| {
            let (addr, paths) = if on_saga {
                (&saga.addr, SAGA_PATHS)
            } else {
                (&edge.addr, GATEWAY_PATHS)
            };
            let path = match known {
                Some(i) => paths[i % paths.len()].0.to_string(),
                None => unknown,
            };
            let allowed = served(paths, &path, !on_saga);
            if allowed.contains(&method) {
                return Ok(()); // served: the other properties look at those
            }
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            runtime().block_on(async {
                let answer = raw(addr, head.as_bytes()).await?;
                if allowed.is_empty() {
                    let body = check(&answer, &[404])?;
                    prop_assert_eq!(code(&body), "not_found");
                } else {
                    let body = check(&answer, &[405])?;
                    prop_assert_eq!(code(&body), "method_not_allowed");
                    prop_assert!(answer.headers.contains_key("allow"), "{:?}", answer);
                }
                Ok(())
            })
        },
    );
    runtime().block_on(async {
        edge.alive().await;
        saga.alive().await;
    });
}
