//! Faults of the shared components under load: PostgreSQL stopped for a minute, Kafka restarted.
//! These stop parts of the running stack, so they are not part of the parallel suite:
//! `scripts/test.sh` runs them afterwards, one at a time
//! (`cargo test --workspace --test faults -- --test-threads=1`), and each one restarts
//! what it stopped even when it fails.

mod broker_restart;
mod media_retry_trace;
mod postgres_outage;

use std::process::Command;

use substrate_testkit::repo_root;

/// Runs `scripts/stack/<component>.sh <action>` (stop / start: both wait until done).
fn stack_script(component: &str, action: &str) {
    let status = Command::new("bash")
        .arg(repo_root().join(format!("scripts/stack/{component}.sh")))
        .arg(action)
        .current_dir(repo_root())
        .status()
        .expect("run the stack script");
    assert!(status.success(), "{component} {action}: {status}");
}

/// Starts `component` again when dropped: a failing test leaves the stack running.
struct Restore(&'static str);

impl Drop for Restore {
    fn drop(&mut self) {
        stack_script(self.0, "start");
    }
}

/// Whether something accepts TCP connections on `addr` (`host:port`).
fn listening(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(300)).is_ok()
        })
}
