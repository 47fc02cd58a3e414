//! Ethernet MAC addresses: parsing as runtimes spell them, and the random fallback.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("{0:?} is not a MAC address (want six hex octets like 00:50:56:aa:bb:01)")]
    Malformed(String),
    #[error("{0} is a multicast address; a VM port needs a unicast MAC")]
    Multicast(MacAddr),
    #[error("{0} is the all-zero address")]
    Zero(MacAddr),
}

impl MacAddr {
    /// Parses and insists on a unicast, non-zero address: what a VM port may use.
    pub fn parse_unicast(text: &str) -> Result<Self, MacError> {
        let mac: MacAddr = text.parse()?;
        if mac.is_multicast() {
            return Err(MacError::Multicast(mac));
        }
        if mac.0 == [0; 6] {
            return Err(MacError::Zero(mac));
        }
        Ok(mac)
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// A random locally administered unicast address, as the kernel's eth_random_addr makes.
    pub fn random_local() -> Self {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Self, MacError> {
        let malformed = || MacError::Malformed(text.to_string());
        let separator = if text.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut parts = text.split(separator);
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(malformed)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
        }
        if parts.next().is_some() {
            return Err(malformed());
        }
        Ok(MacAddr(bytes))
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

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let cases: &[(&str, Result<[u8; 6], ()>)] = &[
            ("00:50:56:aa:bb:01", Ok([0, 0x50, 0x56, 0xaa, 0xbb, 1])),
            ("00:50:56:AA:BB:01", Ok([0, 0x50, 0x56, 0xaa, 0xbb, 1])),
            ("00-50-56-aa-bb-01", Ok([0, 0x50, 0x56, 0xaa, 0xbb, 1])),
            ("00:50:56:aa:bb", Err(())),
            ("00:50:56:aa:bb:01:02", Err(())),
            ("0:50:56:aa:bb:01", Err(())),
            ("zz:50:56:aa:bb:01", Err(())),
            ("", Err(())),
            ("00:50:56:aa:bb:+1", Err(())),
        ];
        for (text, want) in cases {
            let got = text.parse::<MacAddr>().map(|m| m.0).map_err(|_| ());
            assert_eq!(&got, want, "{text}");
        }
    }

    #[test]
    fn unicast_rules() {
        assert!(matches!(
            MacAddr::parse_unicast("01:00:5e:00:00:01"),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            MacAddr::parse_unicast("ff:ff:ff:ff:ff:ff"),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            MacAddr::parse_unicast("00:00:00:00:00:00"),
            Err(MacError::Zero(_))
        ));
        assert!(MacAddr::parse_unicast("02:00:00:00:00:01").is_ok());
    }

    #[test]
    fn random_is_local_unicast() {
        for _ in 0..100 {
            let mac = MacAddr::random_local();
            assert!(!mac.is_multicast());
            assert_eq!(mac.0[0] & 0x02, 0x02);
        }
    }

    #[test]
    fn display_round_trips() {
        let mac: MacAddr = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
    }
}
