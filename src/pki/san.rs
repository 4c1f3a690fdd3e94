//! Subject alternative names rcgen cannot write: a GeneralNames value whose last entry is
//! the RFC 4108 hardwareModuleName otherName (a SEQUENCE, where rcgen's otherName holds
//! only strings), encoded in DER here.

use rcgen::SanType;

/// Dotted-decimal OID to arcs; `None` unless it has at least two arcs and a valid root.
pub fn parse_oid(s: &str) -> Option<Vec<u64>> {
    let arcs = s
        .split('.')
        .map(|a| a.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    // The first two arcs share one subidentifier (40 * X + Y), which must fit in u64.
    let first = arcs
        .get(1)
        .and_then(|y| arcs[0].checked_mul(40)?.checked_add(*y));
    (arcs.len() >= 2 && arcs[0] <= 2 && (arcs[0] == 2 || arcs[1] < 40) && first.is_some())
        .then_some(arcs)
}

fn der_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

fn oid_der(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        body.extend(tmp.iter().rev());
    };
    push(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        push(*a);
    }
    let mut out = Vec::new();
    der_tlv(&mut out, 0x06, &body);
    out
}

/// id-on-hardwareModuleName (RFC 4108).
const ID_ON_HARDWARE_MODULE_NAME: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 4];

/// GeneralNames with `names` followed by a hardwareModuleName otherName.
pub fn with_hardware_module(names: &[SanType], hw_type: &[u64], hw_serial: &[u8]) -> Vec<u8> {
    let mut seq = Vec::new();
    for n in names {
        match n {
            SanType::Rfc822Name(v) => der_tlv(&mut seq, 0x81, v.as_str().as_bytes()),
            SanType::DnsName(v) => der_tlv(&mut seq, 0x82, v.as_str().as_bytes()),
            SanType::URI(v) => der_tlv(&mut seq, 0x86, v.as_str().as_bytes()),
            SanType::IpAddress(ip) => match ip {
                std::net::IpAddr::V4(a) => der_tlv(&mut seq, 0x87, &a.octets()),
                std::net::IpAddr::V6(a) => der_tlv(&mut seq, 0x87, &a.octets()),
            },
            // Profiles render only the four kinds above.
            _ => {}
        }
    }
    let mut hw = oid_der(hw_type);
    der_tlv(&mut hw, 0x04, hw_serial);
    let mut hw_seq = Vec::new();
    der_tlv(&mut hw_seq, 0x30, &hw);
    let mut other = oid_der(ID_ON_HARDWARE_MODULE_NAME);
    der_tlv(&mut other, 0xa0, &hw_seq);
    der_tlv(&mut seq, 0xa0, &other);
    let mut out = Vec::new();
    der_tlv(&mut out, 0x30, &seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn oids_parse_and_encode_as_x690_says() {
        assert_eq!(
            parse_oid("1.3.6.1.4.1.32473.1"),
            Some(vec![1, 3, 6, 1, 4, 1, 32473, 1])
        );
        assert_eq!(parse_oid("3.1"), None);
        assert_eq!(parse_oid("1.40"), None);
        assert_eq!(parse_oid("1"), None);
        assert_eq!(parse_oid("1.x"), None);
        assert_eq!(
            oid_der(&[1, 3, 6, 1, 4, 1, 32473, 1]),
            [0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x81, 0xfd, 0x59, 0x01]
        );
    }

    #[test]
    fn the_hardware_module_name_follows_the_other_names_and_parses_back() {
        let uri = SanType::URI("urn:dev:mac:0a1b2c3d4e5f".try_into().unwrap());
        let der = with_hardware_module(&[uri], &[1, 3, 6, 1, 4, 1, 32473, 1], b"SN-1");
        let (rest, obj) = x509_parser::der_parser::parse_der(&der).unwrap();
        assert!(rest.is_empty());
        let names = obj.as_sequence().unwrap();
        assert_eq!(names.len(), 2);
        let (_, san) = x509_parser::extensions::SubjectAlternativeName::from_der(&der).unwrap();
        match &san.general_names[1] {
            x509_parser::extensions::GeneralName::OtherName(oid, value) => {
                assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.8.4");
                // [0] EXPLICIT { SEQUENCE { hwType, hwSerialNum } }
                assert!(value.ends_with(b"\x04\x04SN-1"));
            }
            other => panic!("{other:?}"),
        }
        // Long contents take the long length form.
        let long = with_hardware_module(&[], &[1, 2], &[b'x'; 300]);
        assert_eq!(&long[..2], &[0x30, 0x82]);
    }
}
