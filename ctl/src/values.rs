//! Cell values as exports spell them: booleans, MACs, address lists, VLANs.
//! Each parser returns a message (no location); the caller adds file, sheet,
//! column and row.

use std::fmt;
use std::net::IpAddr;

use portgroup::mac::MacAddr;

/// `True`/`False` as RVTools writes them; also what spreadsheets and other
/// tools write (`TRUE`, `1`, `yes`). Empty is `None`.
pub fn parse_bool(text: &str) -> Result<Option<bool>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "1" | "yes" | "y" => Ok(Some(true)),
        "false" | "0" | "no" | "n" => Ok(Some(false)),
        _ => Err(format!("{text:?} is not True or False")),
    }
}

/// A 48-bit MAC in any of the forms Go's `net.ParseMAC` accepts
/// (`00:50:56:ab:cd:ef`, `00-50-56-AB-CD-EF`, `0050.56ab.cdef`), any case;
/// it must be unicast and not all zero, as a VM port's MAC is.
pub fn parse_mac(text: &str) -> Result<MacAddr, String> {
    let text = text.trim();
    let colon_form = if text.contains('.') {
        let groups: Vec<&str> = text.split('.').collect();
        if groups.len() != 3
            || !groups
                .iter()
                .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("{text:?} is not a MAC address"));
        }
        let hex: String = groups.concat();
        (0..6)
            .map(|i| &hex[i * 2..i * 2 + 2])
            .collect::<Vec<_>>()
            .join(":")
    } else if text.contains('-') && text.contains(':') {
        return Err(format!("{text:?} is not a MAC address"));
    } else {
        text.to_string()
    };
    MacAddr::parse_unicast(&colon_form).map_err(|e| match e {
        portgroup::mac::MacError::Malformed(_) => format!(
            "{text:?} is not a 48-bit MAC address (like 00:50:56:ab:cd:ef, 00-50-56-ab-cd-ef or 0050.56ab.cdef)"
        ),
        other => other.to_string(),
    })
}

/// An address as an inventory reports it, with its prefix length where the
/// source knows it (govc guest data), bare otherwise (RVTools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    pub ip: IpAddr,
    pub prefix: Option<u8>,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl Addr {
    pub fn is_link_local(&self) -> bool {
        match self.ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        }
    }

    /// Loopback, unspecified and multicast addresses are never a NIC's own.
    pub fn is_unusable(&self) -> bool {
        self.ip.is_loopback() || self.ip.is_unspecified() || self.ip.is_multicast()
    }
}

/// One or several addresses in a cell (`10.1.1.5, fe80::1, 2001:db8::5`),
/// separated by commas, semicolons or white space; `unknown` or empty for none.
pub fn parse_addrs(text: &str) -> Result<Vec<Addr>, String> {
    let mut out = Vec::new();
    for token in text
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if token.eq_ignore_ascii_case("unknown") || token.eq_ignore_ascii_case("n/a") {
            continue;
        }
        out.push(parse_addr(token)?);
    }
    Ok(out)
}

pub fn parse_addr(token: &str) -> Result<Addr, String> {
    let (ip, prefix) = match token.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (token, None),
    };
    // IPv6 with a zone (fe80::1%eth0): the zone is the guest's business.
    let ip = ip.split('%').next().unwrap_or(ip);
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{token:?} is not an IP address"))?;
    let prefix = match prefix {
        None => None,
        Some(p) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match p.parse::<u8>() {
                Ok(p) if p <= max => Some(p),
                _ => return Err(format!("{token:?} has an invalid prefix length")),
            }
        }
    };
    Ok(Addr { ip, prefix })
}

/// A port group's VLAN setting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Vlan {
    /// 0: untagged (no VLAN).
    None,
    /// 1..=4094: an access port.
    Access(u16),
    /// 4095 on a standard port group (guest tagging) or ranges on a distributed
    /// one, normalised as `a-b,c`.
    Trunk(String),
    /// A private VLAN (secondary ID).
    Pvlan(u16),
    /// Text this reader does not understand: reported, never planned.
    Unknown(String),
}

impl Vlan {
    pub fn kind(&self) -> &'static str {
        match self {
            Vlan::None => "untagged",
            Vlan::Access(_) => "access",
            Vlan::Trunk(_) => "trunk",
            Vlan::Pvlan(_) => "pvlan",
            Vlan::Unknown(_) => "unknown",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Vlan::None => "VLAN 0 (untagged)".into(),
            Vlan::Access(v) => format!("VLAN {v}"),
            Vlan::Trunk(spec) if spec == "4095" => "VLAN 4095 (guest tagging)".into(),
            Vlan::Trunk(spec) => format!("VLAN trunk {spec}"),
            Vlan::Pvlan(v) => format!("private VLAN {v}"),
            Vlan::Unknown(text) => format!("VLAN setting {text:?} (not understood)"),
        }
    }
}

/// The VLAN column of vPort (a number) or dvPort (a number, ranges such as
/// `0-4094` or `100-199,300`, or a private VLAN).
pub fn parse_vlan(text: &str) -> Vlan {
    let t = text.trim();
    if t.is_empty() {
        return Vlan::None;
    }
    let lower = t.to_ascii_lowercase();
    if lower.contains("pvlan") || lower.contains("private") {
        let digits: String = lower
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        return match digits.parse::<u16>() {
            Ok(v) => Vlan::Pvlan(v),
            Err(_) => Vlan::Unknown(t.to_string()),
        };
    }
    if let Some(v) = parse_number(t) {
        return match v {
            0 => Vlan::None,
            1..=4094 => Vlan::Access(v as u16),
            4095 => Vlan::Trunk("4095".into()),
            _ => Vlan::Unknown(t.to_string()),
        };
    }
    let mut ranges = Vec::new();
    for part in t.split([',', ';', ' ']).filter(|p| !p.trim().is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (parse_number(a.trim()), parse_number(b.trim())) {
            (Some(a), Some(b)) if a <= b && b <= 4094 => ranges.push((a, b)),
            _ => return Vlan::Unknown(t.to_string()),
        }
    }
    ranges.sort_unstable();
    let spec = ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    Vlan::Trunk(spec)
}

/// A whole number written as text or as a spreadsheet number (`100`, `100.0`).
pub fn parse_number(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_suffix(".0").unwrap_or(t);
    t.parse().ok()
}

/// Where a MAC comes from, by its OUI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacOrigin {
    /// 00:50:56 (vCenter-assigned or manual) or 00:05:69 / 00:1c:14.
    Vmware,
    /// 00:0c:29: made by an ESXi host from the VM's UUID, not unique across hosts.
    HostGenerated,
    /// Outside VMware's OUIs.
    Other,
}

pub fn mac_origin(mac: &MacAddr) -> MacOrigin {
    match [mac.0[0], mac.0[1], mac.0[2]] {
        [0x00, 0x0c, 0x29] => MacOrigin::HostGenerated,
        [0x00, 0x50, 0x56] | [0x00, 0x05, 0x69] | [0x00, 0x1c, 0x14] => MacOrigin::Vmware,
        _ => MacOrigin::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_in_go_forms() {
        for text in [
            "00:50:56:ab:cd:ef",
            "00:50:56:AB:CD:EF",
            "00-50-56-AB-cd-ef",
            "0050.56ab.cdef",
            " 0050.56AB.CDEF ",
        ] {
            assert_eq!(
                parse_mac(text).unwrap().to_string(),
                "00:50:56:ab:cd:ef",
                "{text}"
            );
        }
        for bad in [
            "",
            "00:50:56:ab:cd",
            "00:50:56-ab:cd:ef",
            "0050.56ab",
            "00:00:5e:00:53:01:00:00",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "unknown",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn address_cells() {
        let addrs = parse_addrs("10.1.1.5, fe80::1, 2001:db8::5").unwrap();
        assert_eq!(addrs.len(), 3);
        assert!(addrs[1].is_link_local());
        assert!(!addrs[2].is_link_local());
        assert!(parse_addrs("unknown").unwrap().is_empty());
        assert!(parse_addrs("").unwrap().is_empty());
        assert_eq!(
            parse_addrs("10.0.0.1;10.0.0.2 169.254.3.4").unwrap().len(),
            3
        );
        assert!(parse_addrs("169.254.3.4").unwrap()[0].is_link_local());
        assert_eq!(parse_addrs("10.0.0.1/24").unwrap()[0].prefix, Some(24));
        assert!(parse_addrs("10.0.0").is_err());
        assert!(parse_addrs("10.0.0.1/33").is_err());
        assert_eq!(
            parse_addrs("fe80::1%ens192").unwrap()[0].ip.to_string(),
            "fe80::1"
        );
    }

    #[test]
    fn vlans() {
        assert_eq!(parse_vlan("0"), Vlan::None);
        assert_eq!(parse_vlan(""), Vlan::None);
        assert_eq!(parse_vlan("100"), Vlan::Access(100));
        assert_eq!(parse_vlan("100.0"), Vlan::Access(100));
        assert_eq!(parse_vlan("4095"), Vlan::Trunk("4095".into()));
        assert_eq!(parse_vlan("0-4094"), Vlan::Trunk("0-4094".into()));
        assert_eq!(parse_vlan("300,100-199"), Vlan::Trunk("100-199,300".into()));
        assert_eq!(parse_vlan("Private VLAN 210"), Vlan::Pvlan(210));
        assert_eq!(parse_vlan("pvlan:210"), Vlan::Pvlan(210));
        assert!(matches!(parse_vlan("5000"), Vlan::Unknown(_)));
        assert!(matches!(parse_vlan("blue"), Vlan::Unknown(_)));
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("True"), Ok(Some(true)));
        assert_eq!(parse_bool("FALSE"), Ok(Some(false)));
        assert_eq!(parse_bool(""), Ok(None));
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn mac_origins() {
        let m = |t: &str| mac_origin(&parse_mac(t).unwrap());
        assert_eq!(m("00:50:56:80:00:01"), MacOrigin::Vmware);
        assert_eq!(m("00:1C:14:00:00:01"), MacOrigin::Vmware);
        assert_eq!(m("00:0c:29:12:34:56"), MacOrigin::HostGenerated);
        assert_eq!(m("52:54:00:12:34:56"), MacOrigin::Other);
    }
}
