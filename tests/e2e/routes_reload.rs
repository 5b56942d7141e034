//! routes.yaml hot reload: adding and removing routes takes effect without a restart, a broken
//! file keeps the last good table, and a Kubernetes-style ConfigMap symlink swap is followed.
//! The gateways here never poll (`routes_poll_secs: 0`): only file-system events reload, and a
//! refused edit is observed through the reload metric rather than waited for.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use substrate_testkit::{eventually, unique, Stack};
use uuid::Uuid;

use crate::harness::{post_json, TestGateway};

fn route(name: &str) -> String {
    format!(
        "  {name}:\n    topic: public.user.message.events\n    event_type: user.message\n    auth: jwt\n    key_field: sender_id\n    enrich:\n      sender_id: sub\n      sender_email: email\n"
    )
}

fn table(names: &[&str]) -> String {
    let mut text = String::from("routes:\n");
    for name in names {
        text.push_str(&route(name));
    }
    text
}

async fn status_of(gw: &TestGateway, token: &str, name: &str) -> u16 {
    let url = format!("{}/api/v1/events/{name}", gw.url);
    post_json(
        &url,
        Some(token),
        &json!({"message": "r", "visibility": "broadcast"}),
    )
    .await
    .0
}

async fn until_status(gw: &TestGateway, token: &str, name: &str, expected: u16) {
    eventually(
        Duration::from_secs(10),
        &format!("route {name} to answer {expected}"),
        || async { (status_of(gw, token, name).await == expected).then_some(()) },
    )
    .await
    .unwrap();
}

const NO_POLLING: &str = "gateway:\n  routes_poll_secs: 0\n";

/// `gateway_routes_reloads_total{outcome, file}` as the gateway's /metrics shows it.
async fn reloads(gw: &TestGateway, file: &Path, result: &str) -> u64 {
    let text = crate::harness::http()
        .get(format!("{}/metrics", gw.ops_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = file.display().to_string();
    text.lines()
        .filter(|l| l.starts_with("gateway_routes_reloads_total{"))
        .filter(|l| l.contains(&format!("outcome=\"{result}\"")))
        .filter(|l| l.contains(&format!("file=\"{file}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn until_reloads(gw: &TestGateway, file: &Path, result: &str, at_least: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("{at_least} {result} reloads of {}", file.display()),
        || async { (reloads(gw, file, result).await >= at_least).then_some(()) },
    )
    .await
    .unwrap();
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("routes"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn routes_are_added_removed_and_bad_edits_ignored() {
    let stack = Stack::load();
    let dir = temp_dir();
    let file = dir.join("routes.yaml");
    std::fs::write(&file, table(&["alpha"])).unwrap();
    let gw = TestGateway::start(&stack, &file, NO_POLLING).await;
    let token = stack.token(Uuid::new_v4(), "reload@example.com");

    assert_eq!(status_of(&gw, &token, "alpha").await, 202);
    assert_eq!(status_of(&gw, &token, "beta").await, 404);

    std::fs::write(&file, table(&["alpha", "beta"])).unwrap();
    until_status(&gw, &token, "beta", 202).await;

    std::fs::write(&file, table(&["beta"])).unwrap();
    until_status(&gw, &token, "alpha", 404).await;

    // Broken YAML, then a valid YAML naming a topic without a schema: both are refused and the
    // last good table stays.
    std::fs::write(&file, "routes: [oops").unwrap();
    until_reloads(&gw, &file, "invalid", 1).await;
    assert_eq!(status_of(&gw, &token, "beta").await, 202);
    std::fs::write(
        &file,
        "routes:\n  gamma:\n    topic: no.such.topic\n    event_type: a.b\n    auth: jwt\n",
    )
    .unwrap();
    until_reloads(&gw, &file, "invalid", 2).await;
    assert_eq!(status_of(&gw, &token, "beta").await, 202);
    assert_eq!(status_of(&gw, &token, "gamma").await, 404);

    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[tokio::test]
async fn configmap_symlink_swap_is_followed() {
    let stack = Stack::load();
    let dir = temp_dir();
    // The layout Kubernetes uses for a mounted ConfigMap.
    let v1 = dir.join("..2026_11_25_v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("routes.yaml"), table(&["one"])).unwrap();
    symlink(Path::new("..2026_11_25_v1"), &dir.join("..data"));
    symlink(Path::new("..data/routes.yaml"), &dir.join("routes.yaml"));

    let gw = TestGateway::start(&stack, &dir.join("routes.yaml"), NO_POLLING).await;
    let token = stack.token(Uuid::new_v4(), "cm@example.com");
    assert_eq!(status_of(&gw, &token, "one").await, 202);

    let v2 = dir.join("..2026_11_25_v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("routes.yaml"), table(&["two"])).unwrap();
    symlink(Path::new("..2026_11_25_v2"), &dir.join("..data_tmp"));
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    until_status(&gw, &token, "two", 202).await;
    assert_eq!(status_of(&gw, &token, "one").await, 404);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
