//! JWTs (garbled headers, hostile claims) and API keys.

use super::strategies::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// JWTs
// ---------------------------------------------------------------------------------------------

/// Garbled `Authorization` values: random base64url segments joined by 0–5 dots, token headers
/// with `alg` variants (`none`, `HS512`, lowercase, not a string), ES256 without or with a huge
/// `kid`, well-formed tokens signed with the wrong key or algorithm, wrong schemes, raw bytes.
pub(super) fn garbled_authorization(edge_secret: String) -> impl Strategy<Value = Bytes> {
    let segment = prop_oneof![
        "[A-Za-z0-9_-]{0,60}",
        "[A-Za-z0-9+/=]{0,40}",
        json_value().prop_map(|v| b64(v.to_string())),
    ];
    let alg = prop_oneof![
        select(vec![
            "none", "None", "NONE", "HS512", "HS384", "hs256", "HS256", "ES256", "RS256", "PS256",
            "EdDSA", "ES256K", ""
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let kid = prop_oneof![
        Just(None),
        Just(Some(Value::from(ES256_KID))),
        (1usize..60_000).prop_map(|n| Some(Value::from("k".repeat(n)))),
        json_value().prop_map(Some),
    ];
    let token_header = (alg, kid).prop_map(|(alg, kid)| {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid;
        }
        b64(header.to_string())
    });
    let token = (
        prop_oneof![token_header, segment.clone()],
        prop::collection::vec(segment, 0..=5),
    )
        .prop_map(|(head, rest)| {
            std::iter::once(head)
                .chain(rest)
                .collect::<Vec<_>>()
                .join(".")
        });
    let scheme = select(vec![
        "Bearer ",
        "bearer ",
        "BEARER ",
        "Bearer  ",
        "Bearer",
        "Basic ",
        "",
        "Bearer\t",
        "Token ",
        "Bearer esk_",
    ]);
    let signed_wrongly = (0..4u8).prop_map(move |how| {
        let claims = good_claims();
        let wrong = EncodingKey::from_secret(b"not the secret");
        let right = EncodingKey::from_secret(edge_secret.as_bytes());
        match how {
            0 => jsonwebtoken::encode(&Header::default(), &claims, &wrong).unwrap(),
            1 => jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &right).unwrap(),
            2 => format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(claims.to_string())
            ),
            _ => {
                let token = jsonwebtoken::encode(&Header::default(), &claims, &right).unwrap();
                // The signature of another token.
                let other =
                    jsonwebtoken::encode(&Header::default(), &good_claims(), &right).unwrap();
                let (body, _) = token.rsplit_once('.').unwrap();
                format!("{body}.{}", other.rsplit_once('.').unwrap().1)
            }
        }
    });
    prop_oneof![
        6 => (scheme, token).prop_map(|(s, t)| Bytes::from(format!("{s}{t}"))),
        2 => signed_wrongly.prop_map(|t| Bytes::from(format!("Bearer {t}"))),
        1 => header_bytes(200).prop_map(Bytes),
    ]
}

/// How a token with hostile claims is signed: the stack's HS256 secret, the JWKS key, or the
/// JWKS key without `kid` / with an unknown one.
#[derive(Debug, Clone)]
pub(super) enum Signer {
    Hs256,
    Es256(Option<String>),
}

pub(super) fn hostile_claims() -> impl Strategy<Value = (Signer, Value)> {
    let now = chrono::Utc::now().timestamp();
    let sub = prop_oneof![
        4 => any::<u128>().prop_map(|n| Value::from(Uuid::from_u128(n).to_string())),
        1 => any::<i64>().prop_map(Value::from),
        1 => (1usize..60_000).prop_map(|n| Value::from("s".repeat(n))),
        1 => any::<String>().prop_map(Value::from),
        1 => json_value(),
    ];
    let exp = prop_oneof![
        4 => Just(json!(now + 3600)),
        1 => Just(json!(now - 3600)),
        1 => Just(json!((now + 3600) as f64 + 0.5)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => select(vec![json!(1e300), json!(-1.0), json!(u64::MAX), json!("9999999999"),
                         json!(null), json!(true), json!([now + 3600]), json!({"exp": 1})]),
    ];
    let aud = prop_oneof![
        4 => Just(Some(json!(AUDIENCE))),
        1 => prop::collection::vec(any::<String>().prop_map(Value::from), 0..5)
            .prop_map(|v| Some(Value::Array(v))),
        1 => prop::collection::vec(json_value(), 0..4).prop_map(|mut v| {
            v.push(json!(AUDIENCE));
            Some(Value::Array(v))
        }),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ];
    let email = prop_oneof![
        3 => Just(json!("hostile@example.com")),
        1 => select(vec!["a\u{0}b@example.com", "", "\u{202e}moc.elpmaxe@x"]).prop_map(Value::from),
        1 => (1usize..40_000).prop_map(|n| Value::from("e".repeat(n))),
        1 => json_value(),
    ];
    let nbf = prop_oneof![
        4 => Just(None),
        1 => Just(Some(json!(now + 3600))),
        1 => json_value().prop_map(Some),
    ];
    let extra = prop::collection::btree_map(key(), json_value(), 0..4);
    let signer = prop_oneof![
        4 => Just(Signer::Hs256),
        1 => Just(Signer::Es256(Some(ES256_KID.into()))),
        1 => Just(Signer::Es256(None)),
        1 => (1usize..20_000).prop_map(|n| Signer::Es256(Some("k".repeat(n)))),
    ];
    (signer, sub, exp, aud, email, nbf, extra).prop_map(
        move |(signer, sub, exp, aud, email, nbf, extra)| {
            let mut claims = serde_json::Map::new();
            for (k, v) in extra {
                claims.insert(k, v);
            }
            claims.insert("sub".into(), sub);
            claims.insert("exp".into(), exp);
            claims.insert("email".into(), email);
            claims.insert("iat".into(), json!(now));
            if let Some(aud) = aud {
                claims.insert("aud".into(), aud);
            }
            if let Some(nbf) = nbf {
                claims.insert("nbf".into(), nbf);
            }
            (signer, Value::Object(claims))
        },
    )
}

#[test]
pub(super) fn garbled_authorization_headers_are_refused_with_401() {
    let edge = edge();
    let url = edge.url("/api/v1/events/message");
    let event = json!({"message": "m", "visibility": "broadcast"});
    property(
        "garbled Authorization",
        256,
        garbled_authorization(edge.stack.jwt_secret.clone()),
        |authorization| {
            runtime().block_on(async {
                let value = HeaderValue::from_bytes(&authorization.0).unwrap();
                let answer = send(
                    http()
                        .post(&url)
                        .header("authorization", value)
                        .json(&event),
                )
                .await?;
                check(&answer, &[401])?;
                closes(&answer)
            })
        },
    );
    runtime().block_on(edge.alive());
}

#[test]
pub(super) fn signed_tokens_with_hostile_claims_never_fail_the_server() {
    let edge = edge();
    let url = edge.url("/api/v1/events/message");
    let event = json!({"message": "m", "visibility": "broadcast"});
    property(
        "hostile claims",
        128,
        hostile_claims(),
        |(signer, claims)| {
            let token = match &signer {
                Signer::Hs256 => edge.hs256(&claims),
                Signer::Es256(kid) => {
                    let mut header = Header::new(Algorithm::ES256);
                    header.kid = kid.clone();
                    jsonwebtoken::encode(&header, &claims, &edge.es256).unwrap()
                }
            };
            runtime().block_on(async {
                let answer = send(http().post(&url).bearer_auth(&token).json(&event)).await?;
                // 400 when a claim enriched into the event does not fit it (a `sub` that is no
                // UUID, an `email` that is not a string or holds a NUL): a field error naming it.
                let body = check(&answer, &[202, 400, 401])?;
                if answer.status == 400 {
                    prop_assert_eq!(code(&body), "invalid_field");
                    let field = body["error"]["field"].as_str().unwrap_or_default();
                    let top = field.split(['.', '[']).next().unwrap_or_default();
                    prop_assert!(["sender_id", "sender_email"].contains(&top), "{:?}", answer);
                }
                if answer.status == 202 {
                    prop_assert!(claims["sub"]
                        .as_str()
                        .is_some_and(|s| Uuid::parse_str(s).is_ok()));
                    let email = claims["email"].as_str().unwrap_or_default();
                    prop_assert!(
                        !email.contains('\0'),
                        "a NUL from a claim was stored: {answer:?}"
                    );
                }
                Ok(())
            })
        },
    );
    runtime().block_on(edge.alive());
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

/// How a garbled key is presented.
#[derive(Debug, Clone)]
pub(super) enum Presented {
    XApiKey(Bytes),
    Bearer(Bytes),
    Both(Bytes, Bytes),
}

pub(super) fn garbled_key(real: String) -> impl Strategy<Value = Presented> {
    let alnum = |n: std::ops::Range<usize>| {
        prop::collection::vec(prop_oneof![b'a'..=b'z', b'A'..=b'Z', b'0'..=b'9'], n)
            .prop_map(|b| String::from_utf8(b).unwrap())
    };
    let real_len = real.len();
    let value = prop_oneof![
        (alnum(0..20), alnum(0..40)).prop_map(|(id, s)| Bytes::from(format!("esk_{id}_{s}"))),
        (alnum(12..13), alnum(32..33)).prop_map(|(id, s)| Bytes::from(format!("esk_{id}_{s}"))),
        (
            0..real_len,
            any::<u8>().prop_filter("a header byte", |b| *b >= 0x20 && *b != 0x7f)
        )
            .prop_map({
                let real = real.clone();
                move |(at, byte)| {
                    let mut key = real.clone().into_bytes();
                    key[at] = byte;
                    Bytes(key)
                }
            }),
        (0..real_len).prop_map({
            let real = real.clone();
            move |n| Bytes::from(real[..n].to_string())
        }),
        // Not spaces: a header value's trailing whitespace is not part of it.
        "[!-~]{1,8}".prop_map({
            let real = real.clone();
            move |tail| Bytes::from(format!("{real}{tail}"))
        }),
        header_bytes(80).prop_map(|b| Bytes([b"esk_".to_vec(), b].concat())),
        header_bytes(80).prop_map(Bytes),
        select(vec!["", " ", "esk_", "esk__", "ESK_", "esk_é_ü"])
            .prop_map(|s| Bytes::from(s.to_string())),
        (1usize..8_000).prop_map(|n| Bytes::from(format!("esk_{}", "a".repeat(n)))),
    ];
    prop_oneof![
        3 => value.clone().prop_map(Presented::XApiKey),
        2 => value.clone().prop_map(Presented::Bearer),
        1 => (value.clone(), value).prop_map(|(a, b)| Presented::Both(a, b)),
    ]
}

#[test]
pub(super) fn garbled_api_keys_are_refused_with_401() {
    let edge = edge();
    let url = edge.url("/api/v1/events/purchase");
    let purchase = || {
        json!({"user": {"id": Uuid::new_v4(), "email": "buyer@example.com", "segment": "VIP"},
               "purchase": {"id": "order-1", "amount": 12.5, "currency": "EUR", "items": 1}})
    };
    property(
        "garbled API keys",
        256,
        garbled_key(edge.api_key.clone()),
        |presented| {
            let is_real = |b: &Bytes| b.0 == edge.api_key.as_bytes();
            let value = |b: &Bytes| HeaderValue::from_bytes(&b.0).unwrap();
            let bearer = |b: &Bytes| {
                HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &b.0].concat()).unwrap()
            };
            let mut request = http().post(&url).json(&purchase());
            match &presented {
                Presented::XApiKey(key) if !is_real(key) => {
                    request = request.header("x-api-key", value(key))
                }
                Presented::Bearer(key) if !is_real(key) => {
                    request = request.header("authorization", bearer(key))
                }
                // X-API-Key is read first: the bearer value does not matter then.
                Presented::Both(key, other) if !is_real(key) => {
                    request = request
                        .header("x-api-key", value(key))
                        .header("authorization", bearer(other))
                }
                _ => return Ok(()), // the real key, by chance
            }
            runtime().block_on(async {
                let answer = send(request).await?;
                check(&answer, &[401])?;
                closes(&answer)
            })
        },
    );
    runtime().block_on(async {
        let answer = send(
            http()
                .post(&url)
                .header("x-api-key", &edge.api_key)
                .json(&purchase()),
        )
        .await
        .unwrap();
        check(&answer, &[202]).unwrap();
    });
}
