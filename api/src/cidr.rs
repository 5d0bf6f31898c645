//! IP prefixes (CIDRs) for NetworkPolicy `ipBlock`s.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// An IP prefix such as `10.0.0.0/8` or `fd00::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `address/length`; the address bits past the length must be zero
    /// (as the Kubernetes API requires of ipBlock CIDRs).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?;
        let cidr = Self { addr, len };
        if cidr.network() != addr {
            return Err(format!(
                "{s:?}: host bits are set (did you mean {}/{len}?)",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(len: u8, width: u8) -> u128 {
        if len == 0 {
            0
        } else {
            let all = if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            all & !((1u128 << (width - len)) - 1) & all
        }
    }

    fn network(&self) -> IpAddr {
        let (bits, width) = Self::bits(self.addr);
        let masked = bits & Self::mask(self.len, width);
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4((masked as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(masked.into()),
        }
    }

    /// Whether `ip` is inside this prefix (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, width) = Self::bits(ip);
        let (net, net_width) = Self::bits(self.addr);
        width == net_width && bits & Self::mask(self.len, width) == net
    }

    /// Whether `other` lies wholly inside this prefix.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/64").unwrap();
        assert!(v6.contains("fd00::5".parse().unwrap()));
        assert!(c.contains_cidr(&Cidr::parse("10.1.2.0/24").unwrap()));
        assert!(!c.contains_cidr(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(Cidr::parse("10.1.2.3/32")
            .unwrap()
            .contains("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_prefixes_with_reason() {
        assert_eq!(
            Cidr::parse("10.1.2.3/16").unwrap_err(),
            "\"10.1.2.3/16\": host bits are set (did you mean 10.1.0.0/16?)"
        );
        assert!(Cidr::parse("10.0.0.0").unwrap_err().contains("not a CIDR"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0-32"));
        assert!(Cidr::parse("x/8")
            .unwrap_err()
            .contains("not an IP address"));
    }
}
