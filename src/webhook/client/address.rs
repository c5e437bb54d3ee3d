//! Which addresses a webhook may go to: the private, local and special ranges that are refused
//! unless `WebhookAllowPrivate` is on, IPv4 hidden in IPv6 forms included. Pure functions, used
//! by the client at connect time and by registration to check a URL early.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a webhook may not go to `ip` unless `WebhookAllowPrivate` is on: the range it falls in,
/// or None for a public address. The ranges are those an outside caller of an open
/// `/api/register` must not reach through this node: the node itself, its LAN, its cloud's
/// metadata service (169.254.169.254) and addresses that are not one host.
pub fn private_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return private_v4(v4);
            }
            let s = v6.segments();
            match s[0] {
                _ if v6.is_unspecified() => Some("unspecified"),
                _ if v6.is_loopback() => Some("loopback"),
                x if x & 0xfe00 == 0xfc00 => Some("unique-local (fc00::/7)"),
                x if x & 0xffc0 == 0xfe80 => Some("link-local (fe80::/10)"),
                // Deprecated site-local: still routed inside some networks.
                x if x & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10)"),
                x if x & 0xff00 == 0xff00 => Some("multicast"),
                _ => None,
            }
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified (0.0.0.0/8)",
        (10, _) => "private (10.0.0.0/8)",
        (100, 64..=127) => "shared/CGNAT (100.64.0.0/10)",
        (127, _) => "loopback (127.0.0.0/8)",
        (169, 254) => "link-local (169.254.0.0/16)",
        (172, 16..=31) => "private (172.16.0.0/12)",
        (192, 168) => "private (192.168.0.0/16)",
        (192, 0) if c == 0 => "IETF protocol assignments (192.0.0.0/24)",
        (198, 18..=19) => "benchmarking (198.18.0.0/15)",
        (224..=239, _) => "multicast (224.0.0.0/4)",
        (240..=255, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 one stands for, where the kernel or a gateway would take it to that
/// IPv4 host: mapped `::ffff:a.b.c.d`, the deprecated compatible `::a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d` and 6to4 `2002:AABB:CCDD::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}
