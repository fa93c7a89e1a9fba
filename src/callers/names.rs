//! The syntax of the names a client certificate carries: SPIFFE IDs (the SPIFFE ID
//! standard, `spiffe/spiffe` `standards/SPIFFE-ID.md`, with the X.509-SVID rule that a leaf's
//! ID has a path) and DNS host names (RFC 1123). Pure string checks; which SAN is read, and
//! how many there may be, is `identity`'s.

/// The SPIFFE ID rules (SPIFFE-ID.md section 2; X509-SVID.md section 5.2 for a leaf). Says
/// what is wrong, never repeating the ID.
pub(crate) fn check_spiffe_id(id: &str) -> Result<(), &'static str> {
    const MAX_BYTES: usize = 2048;
    const MAX_TRUST_DOMAIN_BYTES: usize = 255;
    if id.len() > MAX_BYTES {
        return Err("is longer than 2048 bytes");
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("must start with spiffe:// (lowercase scheme, then an authority)")?;
    if rest.contains(['?', '#']) {
        return Err("has a query or fragment");
    }
    if rest.contains('%') {
        return Err("is percent-encoded");
    }
    let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if trust_domain.is_empty() {
        return Err("has an empty trust domain");
    }
    if trust_domain.contains('@') {
        return Err("has userinfo");
    }
    if trust_domain.contains(':') {
        return Err("has a port");
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err("has a trust domain longer than 255 bytes");
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err("has a trust domain of other than a-z, 0-9, '.', '-' and '_'");
    }
    if path.is_empty() {
        return Err("has no path: a workload's ID names more than its trust domain");
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("has an empty path segment (// or a trailing /)"),
            "." | ".." => return Err("has a . or .. path segment"),
            _ if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) =>
            {
                return Err("has a path segment of other than A-Z, a-z, 0-9, '.', '-' and '_'")
            }
            _ => {}
        }
    }
    Ok(())
}

/// A host name (RFC 1123): dot-separated labels of 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen; 253 bytes at most.
pub(crate) fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for good in [
            "spiffe://prod.example/ns/payments/sa/api",
            "spiffe://prod-1.example_x/a.b/C-d_e/..x",
            "spiffe://td/x",
        ] {
            assert_eq!(check_spiffe_id(good), Ok(()), "{good}");
        }
        for good in ["api.payments.svc", "localhost", "API-1.example.com."] {
            assert!(is_host_name(good), "{good}");
        }
    }
}
