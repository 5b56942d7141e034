//! The web app on the gateway's origin (`gateway.web`) and the people directory behind its
//! recipient picker (`GET /api/v1/users`). The app itself is driven in a browser by
//! `web/tests` (Playwright); these check the serving rules and the directory over plain HTTP.

use std::time::Duration;

use serde_json::{json, Value};
use substrate_testkit::{eventually, stack_setting, Stack};
use uuid::Uuid;

use crate::harness::http;

fn setting(key: &str) -> String {
    stack_setting(key).unwrap_or_else(|| panic!("{key} is not set (run ./taskw start)"))
}

#[tokio::test]
async fn web_app_pages_assets_and_config_are_served_and_api_paths_stay_json() {
    let stack = Stack::load();
    let base = &stack.gateway_url;

    let page = http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let kratos = setting("KRATOS_PUBLIC_URL");
    assert!(csp.contains(&kratos), "the app may call Kratos: {csp}");
    assert!(
        csp.contains(&setting("S3_ENDPOINT")),
        "and the S3 endpoint: {csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    let script = html
        .split("src=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .find(|src| src.starts_with("/assets/") && src.ends_with(".js"))
        .unwrap_or_else(|| panic!("the page loads its bundle: {html}"));

    let bundle = http().get(format!("{base}{script}")).send().await.unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(
        bundle.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    // The app's own paths are the page; a missing asset is a 404, not the page.
    let deep = http()
        .get(format!("{base}/files/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), 200);
    assert_eq!(deep.text().await.unwrap(), html);
    let missing = http()
        .get(format!("{base}/assets/missing-0000.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // API and webhook paths never fall through to the app.
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/nope"),
        (reqwest::Method::GET, "/webhooks/nope"),
        (reqwest::Method::POST, "/"),
    ] {
        let response = http()
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{method} {path}");
    }

    let config: Value = http()
        .get(format!("{base}/app-config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config, json!({ "auth_url": kratos }));
}

/// Signs `user` in through the login webhook (the Supabase Database Webhook shape).
async fn sign_in(stack: &Stack, user: Uuid, email: &str) {
    let payload = json!({
        "type": "UPDATE", "table": "users", "schema": "auth",
        "record": {"id": user, "email": email, "last_sign_in_at": chrono::Utc::now().to_rfc3339(),
                   "raw_app_meta_data": {"provider": "email"}},
        "old_record": {"id": user, "email": email, "last_sign_in_at": null}
    });
    let response = http()
        .post(format!("{}/webhooks/login", stack.gateway_url))
        .header("x-webhook-secret", &stack.login_webhook_secret)
        .json(&payload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

async fn search(stack: &Stack, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut request = http().get(format!("{}/api/v1/users?{query}", stack.gateway_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn directory_lists_people_who_signed_in_by_email_prefix() {
    let stack = Stack::load();
    let tag = Uuid::new_v4().simple().to_string()[..10].to_string();
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let ann_email = format!("dir-{tag}-ann@example.com");
    let bob_email = format!("Dir-{tag}-bob@example.com");
    sign_in(&stack, ann, &ann_email).await;
    sign_in(&stack, bob, &bob_email).await;
    let token = stack.token(Uuid::new_v4(), "reader@example.com");

    // Case-insensitive prefix, sorted by e-mail.
    let prefix = format!("q=DIR-{tag}");
    let users = eventually(
        Duration::from_secs(30),
        "both people in the directory",
        || async {
            let (status, body) = search(&stack, Some(&token), &prefix).await;
            (status == 200 && body["users"].as_array()?.len() == 2).then_some(body["users"].clone())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        users,
        json!([{"id": ann, "email": ann_email}, {"id": bob, "email": bob_email}])
    );
    let (_, one) = search(&stack, Some(&token), &format!("{prefix}&limit=1")).await;
    assert_eq!(one["users"], json!([{"id": ann, "email": ann_email}]));

    // A later sign-in with another address updates the entry.
    let renamed = format!("dir-{tag}-ann2@example.com");
    sign_in(&stack, ann, &renamed).await;
    eventually(Duration::from_secs(30), "the new address", || async {
        let (_, body) = search(&stack, Some(&token), &format!("q=dir-{tag}-ann2")).await;
        (body["users"] == json!([{"id": ann, "email": renamed}])).then_some(())
    })
    .await
    .unwrap();

    // LIKE wildcards are literal; bad limits and missing tokens are refused with JSON errors.
    let (status, wild) = search(&stack, Some(&token), "q=%25").await;
    assert_eq!((status, wild["users"].clone()), (200, json!([])));
    let (status, wild) = search(&stack, Some(&token), &format!("q=dir-{tag}_")).await;
    assert_eq!((status, wild["users"].clone()), (200, json!([])));
    for limit in ["0", "51", "x"] {
        let (status, body) = search(&stack, Some(&token), &format!("limit={limit}")).await;
        assert_eq!(status, 400, "limit={limit}: {body}");
        assert_eq!(body["error"]["field"], "limit");
    }
    let (status, body) = search(&stack, None, &prefix).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
}
