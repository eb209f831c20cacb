//! The network vocabulary every layer shares: MAC addresses, IPv4 networks (CIDR and
//! prefix masks) and the shell-style globs of interface names.
//!
//! A leaf: it imports nothing of the crate, so `host`, `cloud`, `config`, `journal` and
//! the engine can all use these types without importing each other (docs/design.md,
//! "Layering").

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A MAC address, compared case-insensitively: the metadata service and the API spell
/// MACs upper case, Linux lower case. Stored normalised to lower case; the spelling the
/// service used is kept by the metadata client where URLs need it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `aa:bb:cc:dd:ee:ff` in either case.
    pub fn parse(text: &str) -> Option<Self> {
        let mut out = [0u8; 6];
        let mut parts = text.trim().split(':');
        for byte in &mut out {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| format!("not a MAC address: {value:?}"))
    }
}

impl From<MacAddr> for String {
    fn from(value: MacAddr) -> Self {
        value.to_string()
    }
}

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .map_err(|_| format!("bad prefix in {text:?}"))?,
            ),
            None => (text, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("not an IPv4 CIDR: {text:?}"))?;
        if prefix > 32 {
            return Err(format!("prefix over 32 in {text:?}"));
        }
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The netmask of a prefix length, as a host-order integer.
pub fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// Shell-style `*` and `?` matching for interface names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.0.0.0/28").expect("cidr");
        assert!(c.contains("10.0.0.15".parse().expect("ip")));
        assert!(!c.contains("10.0.0.16".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("cidr")
                .contains("1.2.3.4".parse().expect("ip"))
        );
        assert_eq!(Cidr::parse("10.1.2.3").expect("cidr").prefix, 32);
    }

    #[test]
    fn glob_matches_star_and_question_mark() {
        assert!(glob_match("eth*", "eth1"));
        assert!(glob_match("eth?", "eth1"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("eth*", "veth1"));
    }

    #[test]
    fn mac_parses_either_case_and_prints_lower_case() {
        let mac = MacAddr::parse("20:90:6F:F5:34:C7").expect("mac");
        assert_eq!(mac.to_string(), "20:90:6f:f5:34:c7");
        assert_eq!(MacAddr::parse("20:90:6f:f5:34:c7"), Some(mac));
        assert_eq!(MacAddr::parse("20:90:6f:f5:34"), None);
    }
}
