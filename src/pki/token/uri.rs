//! PKCS#11 URIs (RFC 7512) naming a CA key on a token: which module, which token,
//! which object. A PIN never travels in one: `pin-value` and `pin-source` are refused,
//! so that a recorded URI can be shown and logged.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Longest URI accepted.
const MAX_LEN: usize = 4096;

/// A parsed `pkcs11:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The PKCS#11 module (shared library) to load.
    pub module_path: PathBuf,
    /// Token label (`token=`).
    pub token: Option<String>,
    /// Token serial number (`serial=`).
    pub serial: Option<String>,
    /// Slot id (`slot-id=`).
    pub slot_id: Option<u64>,
    /// Object label (`object=`, CKA_LABEL).
    pub object: Option<String>,
    /// Object id (`id=`, CKA_ID bytes).
    pub id: Option<Vec<u8>>,
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::input(format!("PKCS#11 URI: {msg}"))
}

impl Pkcs11Uri {
    /// Parses `s`. `module-path` may be a path attribute or a query attribute (step-ca
    /// writes the former, RFC 7512 the latter).
    pub fn parse(s: &str) -> Result<Pkcs11Uri> {
        if s.len() > MAX_LEN {
            return Err(bad(format!("longer than {MAX_LEN} bytes")));
        }
        let rest = match s.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("pkcs11:") => &s[7..],
            _ => return Err(bad("does not start with 'pkcs11:'")),
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri {
            module_path: PathBuf::new(),
            token: None,
            serial: None,
            slot_id: None,
            object: None,
            id: None,
        };
        let mut module = None;
        let mut seen = Vec::new();
        let attrs = path.split(';').map(|a| (a, false)).chain(
            query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .map(|a| (a, true)),
        );
        for (attr, in_query) in attrs {
            if attr.is_empty() {
                continue;
            }
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("attribute '{attr}' has no '='")))?;
            if seen.contains(&name) {
                return Err(bad(format!("attribute '{name}' given twice")));
            }
            seen.push(name);
            let value = decode(raw, name)?;
            let text = || {
                String::from_utf8(value.clone())
                    .map_err(|_| bad(format!("'{name}' is not valid UTF-8")))
            };
            match (name, in_query) {
                ("pin-value" | "pin-source", _) => {
                    return Err(bad(format!(
                        "'{name}' is refused: the PIN comes only from --pin-file, CRADLE_PKCS11_PIN or the terminal"
                    )))
                }
                ("module-path", _) => module = Some(PathBuf::from(text()?)),
                ("token", false) => uri.token = Some(text()?),
                ("serial", false) => uri.serial = Some(text()?),
                ("slot-id", false) => {
                    uri.slot_id = Some(text()?.parse().map_err(|_| {
                        bad(format!("slot-id '{raw}' is not a number"))
                    })?)
                }
                ("object", false) => uri.object = Some(text()?),
                ("id", false) => uri.id = Some(value),
                ("type", false) if matches!(text()?.as_str(), "private" | "public") => {}
                _ => {
                    return Err(bad(format!(
                        "unsupported attribute '{name}' (cradle knows token, serial, slot-id, object, id, type and module-path)"
                    )))
                }
            }
        }
        uri.module_path = module.ok_or_else(|| {
            bad("no module-path (add ?module-path=/usr/lib/softhsm/libsofthsm2.so or your HSM's module)")
        })?;
        if !uri.module_path.is_absolute() {
            return Err(bad(format!(
                "module-path '{}' is not an absolute path",
                uri.module_path.display()
            )));
        }
        if uri.token.is_none() && uri.serial.is_none() && uri.slot_id.is_none() {
            return Err(bad("names no token (add token=LABEL, serial= or slot-id=)"));
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(bad("names no key (add object=LABEL or id=)"));
        }
        Ok(uri)
    }

    /// The same token with the key `object` / `id` instead.
    pub fn for_object(&self, object: &str, id: &[u8]) -> Pkcs11Uri {
        Pkcs11Uri {
            object: Some(object.to_string()),
            id: Some(id.to_vec()),
            ..self.clone()
        }
    }

    /// How the token is named in messages.
    pub fn token_name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            parts.push(format!("'{t}'"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s}"));
        }
        if let Some(s) = self.slot_id {
            parts.push(format!("slot {s}"));
        }
        parts.join(" ")
    }

    /// How the key is named in messages.
    pub fn object_name(&self) -> String {
        match (&self.object, &self.id) {
            (Some(o), Some(id)) => format!("'{o}' (id {})", hex::encode(id)),
            (Some(o), None) => format!("'{o}'"),
            (None, Some(id)) => format!("id {}", hex::encode(id)),
            (None, None) => "(none)".into(),
        }
    }
}

/// The canonical form: path attributes, then `?module-path=`.
impl std::fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut path = Vec::new();
        let text = |n: &str, v: &str| format!("{n}={}", encode(v.as_bytes(), false));
        if let Some(t) = &self.token {
            path.push(text("token", t));
        }
        if let Some(s) = &self.serial {
            path.push(text("serial", s));
        }
        if let Some(s) = self.slot_id {
            path.push(format!("slot-id={s}"));
        }
        if let Some(o) = &self.object {
            path.push(text("object", o));
        }
        if let Some(id) = &self.id {
            let mut s = String::from("id=");
            for b in id {
                let _ = write!(s, "%{b:02X}");
            }
            path.push(s);
        }
        let module = self.module_path.to_string_lossy();
        write!(
            f,
            "pkcs11:{}?module-path={}",
            path.join(";"),
            encode(module.as_bytes(), true)
        )
    }
}

fn decode(raw: &str, name: &str) -> Result<Vec<u8>> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad percent-encoding in '{name}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encodes all but unreserved characters (and '/' in a path value).
fn encode(v: &[u8], path: bool) -> String {
    let mut s = String::with_capacity(v.len());
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (path && b == b'/') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SO: &str = "/usr/lib/softhsm/libsofthsm2.so";

    fn err(s: &str) -> String {
        Pkcs11Uri::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn module_path_in_the_path_or_the_query() {
        let a = Pkcs11Uri::parse(&format!(
            "pkcs11:token=CA%20one;object=issuing?module-path={SO}"
        ))
        .unwrap();
        let b = Pkcs11Uri::parse(&format!(
            "pkcs11:module-path={SO};token=CA%20one;object=issuing"
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.module_path, PathBuf::from(SO));
        assert_eq!(a.token.as_deref(), Some("CA one"));
        assert_eq!(a.object.as_deref(), Some("issuing"));
        assert_eq!(
            a.to_string(),
            format!("pkcs11:token=CA%20one;object=issuing?module-path={SO}")
        );
    }

    #[test]
    fn the_canonical_form_reads_back() {
        let u = Pkcs11Uri::parse(&format!(
            "PKCS11:serial=0a1b;slot-id=3;id=%01%ff?module-path={SO}"
        ))
        .unwrap()
        .for_object("a;b=c?", &[0, 0xfe]);
        let s = u.to_string();
        assert_eq!(Pkcs11Uri::parse(&s).unwrap(), u);
        assert!(s.contains("object=a%3Bb%3Dc%3F;id=%00%FE"), "{s}");
        assert_eq!(u.token_name(), "serial 0a1b slot 3");
        assert_eq!(u.object_name(), "'a;b=c?' (id 00fe)");
    }

    #[test]
    fn refuses_pins_and_what_it_cannot_honour() {
        let e = err(&format!(
            "pkcs11:token=t;object=o?module-path={SO}&pin-value=1234"
        ));
        assert!(
            e.contains("'pin-value' is refused") && !e.contains("1234"),
            "{e}"
        );
        let e = err(&format!(
            "pkcs11:token=t;object=o;pin-source=file:/p?module-path={SO}"
        ));
        assert!(e.contains("'pin-source' is refused"), "{e}");
        assert!(err("pkcs11:token=t;object=o").contains("no module-path"));
        assert!(err("pkcs11:token=t;object=o?module-path=lib.so").contains("not an absolute path"));
        assert!(err(&format!("pkcs11:object=o?module-path={SO}")).contains("names no token"));
        assert!(err(&format!("pkcs11:token=t?module-path={SO}")).contains("names no key"));
        assert!(
            err(&format!("pkcs11:token=t;token=u;object=o?module-path={SO}"))
                .contains("given twice")
        );
        assert!(
            err(&format!("pkcs11:token=t;model=x;object=o?module-path={SO}"))
                .contains("unsupported attribute 'model'")
        );
        assert!(err(&format!("pkcs11:token=%zz;object=o?module-path={SO}"))
            .contains("bad percent-encoding in 'token'"));
        assert!(err(&format!(
            "pkcs11:token=t;object=o;slot-id=x?module-path={SO}"
        ))
        .contains("slot-id 'x'"));
        assert!(err("file:/x").contains("does not start with 'pkcs11:'"));
        assert!(err(&"pkcs11:".repeat(1000)).contains("longer than"));
        assert!(err("pkcs11:token").contains("has no '='"));
    }
}
