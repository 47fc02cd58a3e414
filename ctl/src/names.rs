//! Kubernetes names from vSphere names.

/// A DNS label (RFC 1123: lowercase letters, digits, '-', 1..=63, alphanumeric
/// at both ends) from any vSphere name: lowercased, every run of other
/// characters becomes one '-'. Empty when nothing usable is left.
pub fn dns_label(name: &str, max: usize) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// `base` shortened so that `base-suffix` fits in 63 characters.
pub fn with_suffix(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len() + 1);
    let mut b = base.to_string();
    b.truncate(room);
    while b.ends_with('-') {
        b.pop();
    }
    if b.is_empty() {
        suffix.to_string()
    } else {
        format!("{b}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portgroup::nodeconfig::validate_portgroup_name;

    #[test]
    fn labels() {
        let cases = [
            ("Prod-Web", "prod-web"),
            ("Prod Web", "prod-web"),
            ("  VLAN_100 (DMZ) ", "vlan-100-dmz"),
            ("VM Network", "vm-network"),
            ("Ünïcode", "n-code"),
            ("---", ""),
        ];
        for (input, want) in cases {
            assert_eq!(dns_label(input, 63), want, "{input}");
        }
        let long = dns_label(&"a-".repeat(100), 63);
        assert!(validate_portgroup_name(&long).is_ok(), "{long}");
        let suffixed = with_suffix(&"x".repeat(63), "v100");
        assert_eq!(suffixed.len(), 63);
        assert!(validate_portgroup_name(&suffixed).is_ok());
    }
}
