//! TLS modes against the stack's PostgreSQL (ssl=on, certificate for localhost and 127.0.0.1
//! from the CA in `DATABASE_CA_FILE`): each mode connects, or is refused, as libpq's would, and
//! `pg_stat_ssl` says whether the session really is encrypted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use substrate_db::{connect_one, connect_pool, DbConfig, DbError, SslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::config::Host;

use crate::{database_url, stack_ca_file};

/// The stack's server as a URL with another host, port and query.
struct Server {
    user: String,
    password: String,
    dbname: String,
    /// Where the stack's PostgreSQL listens (IPv4).
    addr: SocketAddr,
}

impl Server {
    async fn stack() -> Self {
        let url = database_url();
        let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
        let Some(Host::Tcp(host)) = config.get_hosts().first() else {
            panic!("DATABASE_URL names no TCP host: {url}");
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .find(SocketAddr::is_ipv4)
            .expect("an IPv4 address of the stack's PostgreSQL");
        let text =
            |bytes: Option<&[u8]>| String::from_utf8(bytes.unwrap_or_default().to_vec()).unwrap();
        Self {
            user: config.get_user().unwrap_or("postgres").to_string(),
            password: text(config.get_password()),
            dbname: config.get_dbname().unwrap_or("postgres").to_string(),
            addr,
        }
    }

    fn url(&self, host: &str, port: u16, query: &str) -> String {
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let url = format!(
            "postgres://{}:{}@{host}:{port}/{}",
            enc(&self.user),
            enc(&self.password),
            enc(&self.dbname)
        );
        if query.is_empty() {
            url
        } else {
            format!("{url}?{query}")
        }
    }

    /// The stack's server by its IP address (the certificate has it as a SAN).
    fn by_ip(&self, query: &str) -> String {
        self.url(&self.addr.ip().to_string(), self.addr.port(), query)
    }
}

fn config(url: String, mode: SslMode, ca: Option<&Path>) -> DbConfig {
    DbConfig {
        sslmode: Some(mode),
        ca_file: ca.map(Path::to_path_buf),
        ..DbConfig::from_url(url)
    }
}

/// Whether this session is encrypted, after proving it answers.
async fn session_is_tls(client: &tokio_postgres::Client) -> bool {
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn connects_with_tls(config: &DbConfig) -> bool {
    let client = connect_one(config)
        .await
        .unwrap_or_else(|e| panic!("connecting with {:?}: {e}", config.sslmode));
    session_is_tls(&client).await
}

async fn refusal(config: &DbConfig) -> String {
    match connect_one(config).await {
        Ok(_) => panic!(
            "connected with {:?} and {:?}",
            config.sslmode, config.ca_file
        ),
        Err(e) => e.to_string(),
    }
}

/// A CA of its own (never the stack's), made with openssl; removed on drop.
struct OtherCa(PathBuf);

impl OtherCa {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("substrate-db-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=not the stack's CA",
                "-keyout",
            ])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt"))
            .output()
            .expect("openssl runs");
        assert!(
            status.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        Self(dir)
    }

    fn cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
}

impl Drop for OtherCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn verify_full_with_the_stack_ca_is_tls_by_ip_and_by_name() {
    let server = Server::stack().await;
    let ca = stack_ca_file();
    let by_ip = config(server.by_ip(""), SslMode::VerifyFull, Some(&ca));
    assert!(connects_with_tls(&by_ip).await);
    let by_name = config(
        server.url("localhost", server.addr.port(), ""),
        SslMode::VerifyFull,
        Some(&ca),
    );
    assert!(connects_with_tls(&by_name).await);
}

#[tokio::test]
async fn the_pool_verifies_the_same_way() {
    let server = Server::stack().await;
    let good = config(
        server.by_ip(""),
        SslMode::VerifyFull,
        Some(&stack_ca_file()),
    );
    let pool = connect_pool(&good).unwrap();
    assert!(session_is_tls(&pool.get().await.unwrap()).await);

    let other = OtherCa::new();
    let bad = config(server.by_ip(""), SslMode::VerifyFull, Some(&other.cert()));
    let error = DbError::from(connect_pool(&bad).unwrap().get().await.err().unwrap());
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[tokio::test]
async fn url_parameters_carry_sslmode_and_sslrootcert() {
    let server = Server::stack().await;
    let ca = stack_ca_file();
    let query = format!(
        "sslmode=verify-full&sslrootcert={}&application_name=substrate-db-it",
        utf8_percent_encode(&ca.to_string_lossy(), NON_ALPHANUMERIC)
    );
    let from_url = DbConfig::from_url(server.by_ip(&query));
    let client = connect_one(&from_url).await.unwrap();
    assert!(session_is_tls(&client).await);
    // The rest of the query still reaches the server.
    let name: String = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "substrate-db-it");

    // Explicit keys win: the URL's verify-full with the right CA, overridden by another CA.
    let other = OtherCa::new();
    let overridden = DbConfig {
        ca_file: Some(other.cert()),
        ..DbConfig::from_url(server.by_ip(&query))
    };
    assert!(refusal(&overridden).await.contains("certificate"));
    // ... and the URL's verify-full, overridden by disable.
    let plain = DbConfig {
        sslmode: Some(SslMode::Disable),
        ..DbConfig::from_url(server.by_ip(&query))
    };
    assert!(!connects_with_tls(&plain).await);
}

#[tokio::test]
async fn verify_full_with_another_ca_is_refused() {
    let server = Server::stack().await;
    let other = OtherCa::new();
    let error = refusal(&config(
        server.by_ip(""),
        SslMode::VerifyFull,
        Some(&other.cert()),
    ))
    .await;
    assert!(error.contains("certificate"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    // With a CA, require and verify-ca verify the chain too (libpq's rule).
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::Prefer] {
        let error = refusal(&config(server.by_ip(""), mode, Some(&other.cert()))).await;
        assert!(error.contains("certificate"), "{mode}: {error}");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_lacks_and_verify_ca_accepts_it() {
    let server = Server::stack().await;
    let ca = stack_ca_file();
    // The TLS name is `host`; the TCP connection goes to `hostaddr`, the stack's server.
    let elsewhere = server.url(
        "not-this-host.invalid",
        server.addr.port(),
        &format!("hostaddr={}", server.addr.ip()),
    );
    let error = refusal(&config(elsewhere.clone(), SslMode::VerifyFull, Some(&ca))).await;
    assert!(error.contains("certificate not valid for name"), "{error}");
    assert!(error.contains("not-this-host.invalid"), "{error}");
    assert!(connects_with_tls(&config(elsewhere, SslMode::VerifyCa, Some(&ca))).await);
}

#[tokio::test]
async fn require_without_a_ca_is_tls_unverified() {
    let server = Server::stack().await;
    assert!(connects_with_tls(&config(server.by_ip(""), SslMode::Require, None)).await);
}

#[tokio::test]
async fn prefer_is_tls_when_the_server_offers_it() {
    let server = Server::stack().await;
    assert!(connects_with_tls(&config(server.by_ip(""), SslMode::Prefer, None)).await);
    // The default is prefer.
    assert!(connects_with_tls(&DbConfig::from_url(server.by_ip(""))).await);
}

#[tokio::test]
async fn disable_is_plain() {
    let server = Server::stack().await;
    assert!(!connects_with_tls(&config(server.by_ip(""), SslMode::Disable, None)).await);
}

#[tokio::test]
async fn verify_full_without_a_ca_is_a_config_error_naming_the_key() {
    let server = Server::stack().await;
    let error = connect_pool(&config(server.by_ip(""), SslMode::VerifyFull, None)).unwrap_err();
    assert!(
        matches!(&error, DbError::Config(m) if m.contains("database.ca_file")),
        "{error}"
    );
    let error = refusal(&DbConfig::from_url(server.by_ip("sslmode=verify-ca"))).await;
    assert!(error.contains("database.ca_file"), "{error}");
}

/// SSLRequest: length 8, code 1234.5679 (80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A relay to the stack's server that answers the TLS request `N`, as a server with ssl=off
/// does, and relays everything else; counts the requests it refused.
async fn relay_refusing_tls(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut server = TcpStream::connect(upstream).await?;
                let mut first = [0u8; 8];
                client.read_exact(&mut first).await?;
                if first == SSL_REQUEST {
                    counter.fetch_add(1, Ordering::SeqCst);
                    client.write_all(b"N").await?;
                } else {
                    server.write_all(&first).await?;
                }
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn prefer_falls_back_to_plain_when_the_server_refuses_tls_and_require_does_not() {
    let server = Server::stack().await;
    let (relay, refused) = relay_refusing_tls(server.addr).await;
    let through_relay = server.url(&relay.ip().to_string(), relay.port(), "");

    assert!(!connects_with_tls(&config(through_relay.clone(), SslMode::Prefer, None)).await);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "prefer asked for TLS first"
    );

    for mode in [SslMode::Require, SslMode::VerifyFull] {
        let error = refusal(&config(through_relay.clone(), mode, Some(&stack_ca_file()))).await;
        assert!(
            error.contains("server does not support TLS"),
            "{mode}: {error}"
        );
    }
    assert_eq!(refused.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_caller_driven_connection_receives_notifications_over_tls() {
    let server = Server::stack().await;
    let verified = config(
        server.by_ip(""),
        SslMode::VerifyFull,
        Some(&stack_ca_file()),
    );
    let (listener, mut connection) = substrate_db::connect(&verified).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    assert!(session_is_tls(&listener).await);
    let channel = format!("substrate_db_it_{}", uuid::Uuid::new_v4().simple());
    listener
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    let sender = connect_one(&verified).await.unwrap();
    sender
        .execute("SELECT pg_notify($1, 'over tls')", &[&channel])
        .await
        .unwrap();
    let payload = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s");
    assert_eq!(payload.as_deref(), Some("over tls"));
}
