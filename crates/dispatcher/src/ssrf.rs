//! Outbound HTTP only to public addresses unless configured otherwise. A rule names its target
//! URL; without this guard a rule could make the dispatcher call internal services (metadata
//! endpoints, the database's HTTP neighbours). The check runs on the resolved addresses inside the
//! HTTP client's resolver, so a name that resolves to a private address is refused at connect
//! time (no window between check and use); literal IP hosts are checked before the request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// True for addresses a public webhook may live at. IPv6 forms that carry or route to an IPv4
/// address (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and the
/// local-use `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) are refused outright: a
/// webhook has no reason to use them, and each can smuggle a private IPv4 past a v4-only check.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embeds_v4 = s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff); // ::/96, ::ffff:0:0/96
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || embeds_v4
                || (s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1)) // NAT64
                || s[0] == 0x2002 // 6to4
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only 100::/64
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
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
        None => return Err("the URL has no host".into()),
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
        let table: &[(&str, bool, &str)] = &[
            ("127.0.0.1", false, "loopback"),
            ("10.1.2.3", false, "private"),
            ("172.16.0.1", false, "private"),
            ("192.168.1.1", false, "private"),
            ("169.254.169.254", false, "link local (cloud metadata)"),
            ("0.0.0.0", false, "unspecified"),
            ("100.64.0.1", false, "shared address space"),
            ("198.18.0.1", false, "benchmarking"),
            ("240.0.0.1", false, "reserved"),
            ("255.255.255.255", false, "broadcast"),
            ("192.0.2.1", false, "documentation"),
            ("224.0.0.1", false, "multicast"),
            ("::1", false, "loopback"),
            ("::", false, "unspecified"),
            ("fd00::1", false, "unique local"),
            ("fe80::1", false, "link local"),
            ("fec0::1", false, "site local"),
            ("ff02::1", false, "multicast"),
            ("2001:db8::1", false, "documentation"),
            ("::ffff:127.0.0.1", false, "IPv4-mapped loopback"),
            (
                "::ffff:93.184.216.34",
                false,
                "IPv4-mapped, even of a public address",
            ),
            ("::127.0.0.1", false, "IPv4-compatible"),
            ("::10.0.0.1", false, "IPv4-compatible private"),
            ("64:ff9b::7f00:1", false, "NAT64 of 127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", false, "NAT64 of the metadata address"),
            ("64:ff9b:1::a00:1", false, "local-use NAT64"),
            ("2002:7f00:1::1", false, "6to4 of 127.0.0.1"),
            ("2002:5db8:d822::1", false, "6to4 of a public address"),
            ("2001:0:4136:e378::1", false, "Teredo"),
            ("100::1", false, "discard-only"),
            ("93.184.216.34", true, "public IPv4"),
            ("1.1.1.1", true, "public IPv4"),
            ("2606:4700:4700::1111", true, "public IPv6"),
            ("2a00:1450:4001:830::200e", true, "public IPv6"),
        ];
        for (text, public, what) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_public(ip), *public, "{text} ({what})");
        }
        assert!(check_literal(&"http://127.0.0.1:9000/x".parse().unwrap()).is_err());
        assert!(check_literal(&"http://[::1]/x".parse().unwrap()).is_err());
        assert!(check_literal(&"http://[64:ff9b::7f00:1]/x".parse().unwrap()).is_err());
        assert!(check_literal(&"http://[::ffff:a9fe:a9fe]/x".parse().unwrap()).is_err());
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
