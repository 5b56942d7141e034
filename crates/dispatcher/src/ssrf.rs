//! Outbound HTTP only to public addresses unless configured otherwise. A rule names its target
//! URL; without this guard a rule could make the dispatcher call internal services (metadata
//! endpoints, the database's HTTP neighbours). The check runs on the resolved addresses inside the
//! HTTP client's resolver, so a name that resolves to a private address is refused at connect
//! time (no window between check and use); literal IP hosts are checked before the request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// True for addresses a public webhook may live at.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

/// Checks a URL's host when it is an IP literal; names are checked by [`GuardedResolver`].
pub fn check_literal(url: &reqwest::Url) -> Result<(), String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(format!("`{url}` has no host")),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(format!(
            "{ip} is not a public address ({REFUSED}; see dispatcher.http.allow_private_targets)"
        ))
    }
}

/// Part of every refusal message (how a refused connection is told from a failed one).
pub const REFUSED: &str = "private targets are not allowed";

/// A resolver that drops non-public addresses and fails when none is left.
pub struct GuardedResolver;

impl GuardedResolver {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to non-public addresses ({}); {REFUSED}",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert!(check_literal(&"http://127.0.0.1:9000/x".parse().unwrap()).is_err());
        assert!(check_literal(&"http://[::1]/x".parse().unwrap()).is_err());
        assert!(check_literal(&"https://hooks.example.com/x".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_private_addresses() {
        let err = GuardedResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is private");
        assert!(err.to_string().contains("non-public"), "{err}");
    }
}
