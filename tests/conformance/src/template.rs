//! Placeholders in a case's policies, filled in for the family being run:
//! `{{ip ns/pod}}` the pod's address, `{{cidr ns/pod}}` its /32 or /128,
//! `{{net N ns/pod}}` the /N network holding it, `{{any}}` `0.0.0.0/0` or `::/0`.
use std::{collections::BTreeMap, net::IpAddr};

use serde_json::Value;

/// Each pod's address in the family being run.
pub type Addresses = BTreeMap<String, IpAddr>;

/// `value` with every placeholder in its strings replaced.
pub fn expand(value: &Value, addrs: &Addresses, v6: bool) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(expand_str(s, addrs, v6)?),
        Value::Array(items) => Value::Array(items.iter().map(|v| expand(v, addrs, v6)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), expand(v, addrs, v6)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn expand_str(s: &str, addrs: &Addresses, v6: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or_else(|| format!("{s:?}: unclosed {{{{"))? + start;
        out.push_str(&placeholder(rest[start + 2..end].trim(), addrs, v6)?);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholder(inner: &str, addrs: &Addresses, v6: bool) -> Result<String, String> {
    let addr = |pod: &str| addrs.get(pod).copied().ok_or_else(|| format!("{{{{{inner}}}}}: no pod {pod:?}"));
    let words: Vec<&str> = inner.split_whitespace().collect();
    match words.as_slice() {
        ["any"] => Ok(if v6 { "::/0" } else { "0.0.0.0/0" }.to_owned()),
        ["ip", pod] => Ok(addr(pod)?.to_string()),
        ["cidr", pod] => {
            let a = addr(pod)?;
            Ok(format!("{a}/{}", if a.is_ipv6() { 128 } else { 32 }))
        }
        ["net", bits, pod] => {
            let bits: u8 = bits.parse().map_err(|_| format!("{{{{{inner}}}}}: {bits:?} is not a prefix length"))?;
            network(addr(pod)?, bits).ok_or_else(|| format!("{{{{{inner}}}}}: /{bits} is too long"))
        }
        _ => Err(format!("{{{{{inner}}}}}: unknown placeholder (ip, cidr, net N, any)")),
    }
}

/// The `/bits` network holding `addr`, as CIDR text; `None` past the
/// family's length.
pub fn network(addr: IpAddr, bits: u8) -> Option<String> {
    let bits = u32::from(bits);
    Some(match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32u32.checked_sub(bits)?).unwrap_or(0);
            format!("{}/{bits}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128u32.checked_sub(bits)?).unwrap_or(0);
            format!("{}/{bits}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn addrs() -> Addresses {
        Addresses::from([
            ("x/b".to_owned(), "198.18.0.3".parse().unwrap()),
            ("y/a".to_owned(), "fd18::5".parse().unwrap()),
        ])
    }

    #[test]
    fn fills_every_placeholder() {
        let policy = json!({"to": [{"ipBlock": {"cidr": "{{net 4 x/b}}", "except": ["{{cidr x/b}}"]}}],
                            "note": "host {{ ip x/b }}!", "any": "{{any}}", "port": 80});
        let v4 = expand(&policy, &addrs(), false).unwrap();
        assert_eq!(
            v4,
            json!({"to": [{"ipBlock": {"cidr": "192.0.0.0/4", "except": ["198.18.0.3/32"]}}],
                   "note": "host 198.18.0.3!", "any": "0.0.0.0/0", "port": 80})
        );
        assert_eq!(expand(&json!("{{cidr y/a}}"), &addrs(), true).unwrap(), json!("fd18::5/128"));
        assert_eq!(expand(&json!("{{net 4 y/a}}"), &addrs(), true).unwrap(), json!("f000::/4"));
        assert_eq!(expand(&json!("{{any}}"), &addrs(), true).unwrap(), json!("::/0"));
        assert_eq!(expand(&json!("{{net 0 x/b}}"), &addrs(), false).unwrap(), json!("0.0.0.0/0"));
        assert_eq!(expand(&json!("{{net 32 x/b}}"), &addrs(), false).unwrap(), json!("198.18.0.3/32"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = |s: &str| expand(&json!(s), &addrs(), false).unwrap_err();
        assert!(e("{{ip q/q}}").contains("no pod \"q/q\""));
        assert!(e("{{cidr x/b").contains("unclosed"));
        assert!(e("{{host x/b}}").contains("unknown placeholder"));
        assert!(e("{{net 33 x/b}}").contains("too long"));
    }
}
