//! substrate-db against the local stack's PostgreSQL (`./taskw start`; settings from the
//! environment, else `.local/stack.env`). No fakes of PostgreSQL: a test that needs a server
//! without TLS puts a relay in front of the real one that only answers the TLS request.

mod tls;

use std::collections::HashMap;
use std::path::PathBuf;

/// `key` from the environment, else from `.local/stack.env`; panics naming it when neither has it.
pub fn stack_setting(key: &str) -> String {
    if let Ok(value) = std::env::var(key) {
        return value;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.local/stack.env");
    let file: HashMap<String, String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    file.get(key).cloned().unwrap_or_else(|| {
        panic!(
            "{key} is not set: start the stack with ./taskw start (it writes .local/stack.env) \
             or export {key}"
        )
    })
}

/// The stack's `DATABASE_URL`.
pub fn database_url() -> String {
    stack_setting("DATABASE_URL")
}

/// The CA of the stack's PostgreSQL certificate (`DATABASE_CA_FILE`), which must exist.
pub fn stack_ca_file() -> PathBuf {
    let path = PathBuf::from(stack_setting("DATABASE_CA_FILE"));
    assert!(
        path.is_file(),
        "DATABASE_CA_FILE={} does not exist: scripts/stack/postgres.sh start makes it",
        path.display()
    );
    path
}
