//! Ory Kratos, the stack's identity provider, end to end: sign-up and login through its API and
//! browser flows, a session turned into an ES256 JWT that the stack's gateway verifies through its
//! JWKS URL, the after-login web hook that becomes the user's `identity.login` notification, and a
//! login that fails, issuing no session, when the gateway cannot store the login event.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use rdkafka::message::Message;
use serde_json::{json, Value};
use substrate_testkit::{eventually, repo_root, stack_setting, Stack};
use uuid::Uuid;

use crate::harness::{http, post_json, TestGateway};

const WAIT: Duration = Duration::from_secs(30);

fn setting(key: &str) -> String {
    stack_setting(key)
        .unwrap_or_else(|| panic!("{key} is not set: start the stack with ./taskw start"))
}

/// A new user's e-mail and password.
fn credentials() -> (String, String) {
    (
        format!("kratos-{}@example.com", Uuid::new_v4().simple()),
        format!("Pw-{}-9!", Uuid::new_v4().simple()),
    )
}

/// The public and admin APIs of a Kratos instance.
struct Kratos {
    public: String,
    admin: String,
}

impl Kratos {
    fn of_stack() -> Self {
        Self {
            public: setting("KRATOS_PUBLIC_URL"),
            admin: setting("KRATOS_ADMIN_URL"),
        }
    }

    /// Starts an API flow (`registration` or `login`) and submits `body` to it.
    async fn api_flow(&self, flow: &str, body: Value) -> (u16, Value) {
        let started: Value = http()
            .get(format!("{}/self-service/{flow}/api", self.public))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let action = started["ui"]["action"].as_str().expect("ui.action");
        let response = http().post(action).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn sign_up(&self, email: &str, password: &str) -> Value {
        let (status, body) = self
            .api_flow(
                "registration",
                json!({"method": "password", "password": password, "traits": {"email": email}}),
            )
            .await;
        assert_eq!(status, 200, "sign-up: {body}");
        body
    }

    async fn log_in(&self, email: &str, password: &str) -> (u16, Value) {
        self.api_flow(
            "login",
            json!({"method": "password", "identifier": email, "password": password}),
        )
        .await
    }

    /// The session's JWT from the stack's tokenizer template, for a session token
    /// (`X-Session-Token`) or a session cookie (`Cookie`).
    async fn jwt(&self, auth_header: &str, value: &str) -> String {
        let whoami: Value = http()
            .get(format!(
                "{}/sessions/whoami?tokenize_as={}",
                self.public,
                setting("KRATOS_TOKEN_TEMPLATE")
            ))
            .header(auth_header, value)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        whoami["tokenized"]
            .as_str()
            .unwrap_or_else(|| panic!("no tokenized session: {whoami}"))
            .to_string()
    }

    /// How many sessions an identity has (admin API).
    async fn sessions(&self, identity: &str) -> usize {
        let list: Value = http()
            .get(format!(
                "{}/admin/identities/{identity}/sessions",
                self.admin
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        list.as_array().map(Vec::len).expect("a list of sessions")
    }
}

/// Header and claims of a JWT (not verified: the gateway does that).
fn jwt_parts(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let text = token.split('.').nth(i).expect("three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (part(0), part(1))
}

/// The `identity.login` notification of `user` for the sign-in at `signed_in_at`.
async fn login_notification(stack: &Stack, user: Uuid, signed_in_at: &str) -> Value {
    let db = stack.db().await;
    eventually(WAIT, "the identity.login notification", || async {
        db.query(
            "SELECT payload FROM public.user_notifications \
             WHERE event_type = 'identity.login' AND visibility = 'direct' AND recipient_id = $1",
            &[&user],
        )
        .await
        .ok()?
        .into_iter()
        .map(|row| row.get::<_, Value>(0))
        .find(|payload| payload["last_sign_in_at"] == signed_in_at)
    })
    .await
    .unwrap()
}

/// Posts a broadcast message with `jwt` to the stack's gateway and returns the stored record's
/// value (as JSON).
async fn post_message(stack: &Stack, jwt: &str, text: &str) -> Value {
    let topic = "public.user.message.events";
    let consumer = stack.consumer_at_end(topic);
    let (status, _, body) = post_json(
        &format!("{}/api/v1/events/message", stack.gateway_url),
        Some(jwt),
        &json!({"message": text, "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 202, "the gateway accepts Kratos' JWT: {body}");
    let event_id = body["event_id"].as_str().expect("event_id").to_string();
    let record = tokio::time::timeout(WAIT, async {
        loop {
            let message = consumer.recv().await.expect("consume");
            let headers = message.headers().expect("headers").detach();
            if substrate_kafka::headers::header_str(&headers, "ce_id") == Some(event_id.as_str()) {
                return message.detach();
            }
        }
    })
    .await
    .expect("the message record in the topic");
    let (value, _) = stack
        .registry()
        .decode(record.payload().expect("payload"))
        .await
        .unwrap();
    substrate_avro::avro_to_json(&value)
}

#[tokio::test]
async fn kratos_sign_up_login_jwt_message_and_login_notification() {
    let stack = Stack::load();
    let kratos = Kratos::of_stack();
    let (email, password) = credentials();

    let signed_up = kratos.sign_up(&email, &password).await;
    let identity = signed_up["identity"]["id"]
        .as_str()
        .expect("identity.id")
        .to_string();
    let user = Uuid::parse_str(&identity).unwrap();
    assert!(
        signed_up["session_token"].is_string(),
        "signed in at sign-up: {signed_up}"
    );
    // A sign-up signs in: its web hook posts an auth.users INSERT, which becomes the user's first
    // identity.login event (sign-in time = the identity's creation), and puts the user in the
    // directory of people others can write to.
    let created_at = signed_up["identity"]["created_at"]
        .as_str()
        .expect("identity.created_at");
    let first = login_notification(&stack, user, created_at).await;
    assert_eq!(first["email"], email.as_str());
    let listed: String = stack
        .db()
        .await
        .query_one(
            "SELECT email FROM public.user_directory WHERE user_id = $1",
            &[&user],
        )
        .await
        .expect("the new user is in user_directory")
        .get(0);
    assert_eq!(listed, email);
    let (status, body) = kratos.log_in(&email, "not-the-password-1").await;
    assert_eq!(status, 400, "a wrong password is refused: {body}");

    let (status, login) = kratos.log_in(&email, &password).await;
    assert_eq!(status, 200, "login: {login}");
    let session_token = login["session_token"].as_str().expect("session_token");
    let signed_in_at = login["session"]["authenticated_at"]
        .as_str()
        .expect("authenticated_at")
        .to_string();

    // The tokenizer's JWT: ES256 with the key the JWKS URL publishes, Supabase-shaped claims.
    let jwt = kratos.jwt("X-Session-Token", session_token).await;
    let (head, claims) = jwt_parts(&jwt);
    assert_eq!(head["alg"], "ES256");
    let jwks: Value = http()
        .get(setting("KRATOS_JWKS_URL"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().expect("a JWK set");
    assert!(
        keys.iter().any(|k| k["kid"] == head["kid"]),
        "{jwks} lacks {head}"
    );
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "no private key part is published"
    );
    assert_eq!(claims["sub"], identity.as_str());
    assert_eq!(claims["email"], email.as_str());
    assert_eq!(claims["aud"], "authenticated");
    assert_eq!(claims["role"], "authenticated");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(
        (60..=3600).contains(&lifetime),
        "a short-lived token: {lifetime} s"
    );

    // The stack's gateway verifies it: the message's sender is the Kratos identity.
    let record = post_message(&stack, &jwt, "signed in with Kratos").await;
    assert_eq!(record["sender_id"], identity.as_str());
    assert_eq!(record["sender_email"], email.as_str());

    // The login went through the web hook to the gateway: the user's login notification.
    let payload = login_notification(&stack, user, &signed_in_at).await;
    assert_eq!(payload["user_id"], identity.as_str());
    assert_eq!(payload["email"], email.as_str());
    assert_eq!(payload["provider"], "email");
    assert_eq!(kratos.sessions(&identity).await, 2, "sign-up and login");

    // Kratos logs at `warning`: the hook's secret header is not in its log.
    if let Ok(log) = std::fs::read_to_string(repo_root().join(".local/logs/kratos.log")) {
        assert!(!log.contains(&stack.login_webhook_secret));
    }
}

/// `Set-Cookie` values of a response, by name.
fn cookies(response: &reqwest::Response, jar: &mut HashMap<String, String>) {
    for value in response.headers().get_all(header::SET_COOKIE) {
        let pair = value.to_str().unwrap().split(';').next().unwrap();
        if let Some((name, value)) = pair.split_once('=') {
            jar.insert(name.trim().to_string(), value.trim().to_string());
        }
    }
}

fn cookie_header(jar: &HashMap<String, String>) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A browser flow as a single-page app runs it: the flow as JSON, its CSRF token (unless the
/// form has one) and cookie, the form posted as JSON; returns the status, the answer and the
/// cookies.
async fn browser_flow(
    kratos: &Kratos,
    flow: &str,
    mut form: Value,
) -> (u16, Value, HashMap<String, String>) {
    let mut jar = HashMap::new();
    let response = http()
        .get(format!("{}/self-service/{flow}/browser", kratos.public))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a {flow} browser flow");
    cookies(&response, &mut jar);
    let started: Value = response.json().await.unwrap();
    let csrf = started["ui"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["attributes"]["name"] == "csrf_token")
        .and_then(|n| n["attributes"]["value"].as_str())
        .expect("a csrf_token node")
        .to_string();
    assert!(
        jar.keys().any(|k| k.starts_with("csrf_token")),
        "a CSRF cookie: {jar:?}"
    );
    if form.get("csrf_token").is_none() {
        form["csrf_token"] = json!(csrf);
    }
    let response = http()
        .post(started["ui"]["action"].as_str().expect("ui.action"))
        .header(header::ACCEPT, "application/json")
        .header(header::COOKIE, cookie_header(&jar))
        .json(&form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    cookies(&response, &mut jar);
    (status, response.json().await.unwrap_or(Value::Null), jar)
}

#[tokio::test]
async fn kratos_browser_flows_with_csrf_and_session_cookie() {
    let stack = Stack::load();
    let kratos = Kratos::of_stack();
    let (email, password) = credentials();

    let (status, signed_up, _) = browser_flow(
        &kratos,
        "registration",
        json!({"method": "password", "password": password, "traits": {"email": email}}),
    )
    .await;
    assert_eq!(status, 200, "browser sign-up: {signed_up}");
    let identity = signed_up["identity"]["id"]
        .as_str()
        .expect("identity.id")
        .to_string();

    // A form whose CSRF token does not match its cookie is refused.
    let (status, refused, jar) = browser_flow(
        &kratos,
        "login",
        json!({"method": "password", "identifier": email, "password": password,
               "csrf_token": "not-the-token"}),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert!(!jar.contains_key("ory_kratos_session"));

    let (status, login, jar) = browser_flow(
        &kratos,
        "login",
        json!({"method": "password", "identifier": email, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "browser login: {login}");
    assert!(
        jar.contains_key("ory_kratos_session"),
        "a session cookie: {jar:?}"
    );
    let signed_in_at = login["session"]["authenticated_at"]
        .as_str()
        .expect("authenticated_at")
        .to_string();
    let session_cookie = format!("ory_kratos_session={}", jar["ory_kratos_session"]);

    let jwt = kratos.jwt("Cookie", &session_cookie).await;
    let record = post_message(&stack, &jwt, "from the browser").await;
    assert_eq!(record["sender_id"], identity.as_str());

    let user = Uuid::parse_str(&identity).unwrap();
    let payload = login_notification(&stack, user, &signed_in_at).await;
    assert_eq!(payload["email"], email.as_str());
}

/// One delivery of the login web hook: the secret header, the body and the gateway's answer.
#[derive(Clone, Debug)]
struct Delivery {
    secret: Option<String>,
    body: Value,
    status: u16,
}

/// An HTTP hop in front of a gateway's `/webhooks/login` that records every delivery.
#[derive(Clone)]
struct Recorder {
    target: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

async fn forward(
    State(recorder): State<Recorder>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let secret = headers
        .get("x-webhook-secret")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut request = http()
        .post(&recorder.target)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.clone());
    if let Some(secret) = &secret {
        request = request.header("x-webhook-secret", secret);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let answer_body = answer.bytes().await.unwrap();
    recorder.deliveries.lock().unwrap().push(Delivery {
        secret,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status,
    });
    let mut response = (StatusCode::from_u16(status).unwrap(), answer_body).into_response();
    if let Some(retry_after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after);
    }
    response
}

impl Recorder {
    async fn start(target: String) -> (Self, String) {
        let recorder = Self {
            target,
            deliveries: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/webhooks/login", axum::routing::post(forward))
            .with_state(recorder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/login", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (recorder, url)
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A second Kratos process on the stack's database and configuration, with its own ports and
/// its login web hook sent to `hook_url`. Stopped on drop.
struct SecondKratos {
    api: Kratos,
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl SecondKratos {
    async fn start(hook_url: &str) -> Self {
        let stack_config = PathBuf::from(setting("KRATOS_CONFIG"));
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&stack_config).unwrap()).unwrap();
        let yaml = |v: &str| serde_yaml::Value::String(v.to_string());
        let (public, admin) = (free_port(), free_port());
        for (listener, port) in [("public", public), ("admin", admin)] {
            let serve = &mut doc["serve"][listener];
            serve["port"] = serde_yaml::to_value(port).unwrap();
            serve["base_url"] = yaml(&format!("http://127.0.0.1:{port}/"));
        }
        let hook = &mut doc["selfservice"]["flows"]["login"]["after"]["hooks"][0];
        assert_eq!(hook["hook"], yaml("web_hook"), "the stack's login hook");
        hook["config"]["url"] = yaml(hook_url);
        let dir = stack_config.parent().unwrap();
        let config = dir.join(format!("test-{}.yml", Uuid::new_v4().simple()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&config)
                .unwrap();
            file.write_all(serde_yaml::to_string(&doc).unwrap().as_bytes())
                .unwrap();
        }
        let log = repo_root().join(".local/logs/kratos-second.log");
        let child = Command::new(setting("KRATOS_BIN"))
            .args(["serve", "-c"])
            .arg(&config)
            .args(["--dev", "--sqa-opt-out"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start a second kratos");
        let second = Self {
            api: Kratos {
                public: format!("http://127.0.0.1:{public}"),
                admin: format!("http://127.0.0.1:{admin}"),
            },
            child,
            config,
            log: log.clone(),
        };
        let ready = format!("{}/admin/health/ready", second.api.admin);
        eventually(WAIT, "the second kratos is ready", || async {
            let response = http().get(&ready).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; see {}", log.display()));
        second
    }
}

impl Drop for SecondKratos {
    fn drop(&mut self) {
        // SIGTERM first, so it ends its Jsonnet worker processes; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

#[tokio::test]
async fn kratos_login_fails_when_the_gateway_cannot_store_the_login_event() {
    let stack = Stack::load();
    // A real gateway whose broker is unreachable: its login webhook answers 503 (Retry-After 1 s)
    // because the event cannot be stored.
    let overlay = "kafka:\n  bootstrap_servers: 127.0.0.1:1\n  message_timeout_ms: 20000\n\
                   gateway:\n  retry_after_secs: 1\n";
    let gw = TestGateway::start(&stack, &repo_root().join("routes.yaml"), overlay).await;
    let (recorder, hook_url) = Recorder::start(format!("{}/webhooks/login", gw.url)).await;
    let second = SecondKratos::start(&hook_url).await;
    let kratos = &second.api;

    let (email, password) = credentials();
    let signed_up = kratos.sign_up(&email, &password).await;
    let identity = signed_up["identity"]["id"]
        .as_str()
        .expect("identity.id")
        .to_string();
    assert_eq!(kratos.sessions(&identity).await, 1, "the sign-up's session");
    // The sign-up's own event went through the registration hook to the stack's gateway; the
    // recorder sits only in front of the login hook.
    assert!(
        recorder.deliveries().is_empty(),
        "{:?}",
        recorder.deliveries()
    );

    let (status, body) = kratos.log_in(&email, &password).await;
    // Kratos' API flow answers 400 with the hook's failure as a server error in the body.
    assert!(!(200..300).contains(&status), "the login fails: {body}");
    assert!(
        body["error"]["code"].as_u64().unwrap_or(0) >= 500,
        "the login fails: {body}"
    );
    assert!(body.get("session_token").is_none(), "{body}");
    assert_eq!(
        kratos.sessions(&identity).await,
        1,
        "the failed login issued no session"
    );

    // Kratos delivered the hook and retried it twice, each time with the same body (the same
    // sign-in time, hence the same event id at the gateway), and the gateway refused each.
    let deliveries = recorder.deliveries();
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    for delivery in &deliveries {
        assert_eq!(delivery.status, 503, "{delivery:?}");
        assert_eq!(
            delivery.secret.as_deref(),
            Some(stack.login_webhook_secret.as_str())
        );
        assert_eq!(delivery.body, deliveries[0].body);
    }
    let sent = &deliveries[0].body;
    assert_eq!(
        (&sent["type"], &sent["schema"], &sent["table"]),
        (&json!("UPDATE"), &json!("auth"), &json!("users"))
    );
    assert_eq!(sent["record"]["id"], identity.as_str());
    assert_eq!(sent["record"]["email"], email.as_str());
    assert!(sent["record"]["last_sign_in_at"].is_string(), "{sent}");
    assert!(sent["old_record"]["last_sign_in_at"].is_null(), "{sent}");

    // Through the stack's Kratos, whose gateway stores the event, the same user logs in.
    let (status, login) = Kratos::of_stack().log_in(&email, &password).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(kratos.sessions(&identity).await, 2);
    let signed_in_at = login["session"]["authenticated_at"].as_str().unwrap();
    let user = Uuid::parse_str(&identity).unwrap();
    login_notification(&stack, user, signed_in_at).await;

    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(
        log.contains("Webhook request failed"),
        "the failure is logged"
    );
    assert!(
        !log.contains(&stack.login_webhook_secret),
        "but not the secret"
    );
    drop(second);
    gw.shutdown.cancel();
    let _ = gw.handle.await;
}
