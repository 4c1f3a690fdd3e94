//! Espressif's `esp_secure_cert` partition in its TLV format, the layout ESP-IDF's
//! `esp_secure_cert_mgr` reads a device identity from: each entry is a 12-byte header
//! (magic 0xBA5EBA11, flags, 3 reserved, type, subtype, length16), the data zero-padded
//! to 16 bytes, and a CRC32 (zlib's, seeded 0xFFFFFFFF) of header, data and padding.
//! Certificates and the key go in as NUL-terminated PEM, as Espressif's own
//! `esp-secure-cert-tool` writes them; the rest of the partition is erased flash (0xFF).

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::pki::cert::to_pem;

pub const MAGIC: u32 = 0xBA5E_BA11;
pub const TYPE_CA_CERT: u8 = 0;
pub const TYPE_DEV_CERT: u8 = 1;
pub const TYPE_PRIV_KEY: u8 = 2;
/// Where ESP-IDF's example partition tables put the partition, and its usual size.
pub const DEFAULT_OFFSET: u32 = 0xD000;
pub const DEFAULT_SIZE: u32 = 0x2000;
pub const HEADER_LEN: usize = 12;
const ALIGN: usize = 16;

/// zlib's `crc32(data, 0xFFFFFFFF)`: the CRC-32 register starts at 0, not at !0.
pub fn crc32_seeded(data: &[u8]) -> u32 {
    let mut c: u32 = 0;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn padded(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Bytes an entry with `len` data bytes takes (header, padded data, CRC).
pub fn entry_len(len: usize) -> usize {
    HEADER_LEN + padded(len) + 4
}

fn entry(kind: u8, data: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(data.len()).map_err(|_| {
        Error::input(format!(
            "esp_secure_cert entry of {} bytes is too long",
            data.len()
        ))
    })?;
    let mut e = Vec::with_capacity(entry_len(data.len()));
    e.extend_from_slice(&MAGIC.to_le_bytes());
    // Flags 0: a plaintext key (DEFAULT_FORMAT_KEY); no DS or HMAC-derived key.
    e.extend_from_slice(&[0, 0, 0, 0, kind, 0]);
    e.extend_from_slice(&len.to_le_bytes());
    e.extend_from_slice(data);
    e.resize(HEADER_LEN + padded(data.len()), 0);
    let crc = crc32_seeded(&e);
    e.extend_from_slice(&crc.to_le_bytes());
    Ok(e)
}

fn pem_z(label: &str, der: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(to_pem(label, der).into_bytes());
    v.push(0);
    v
}

/// A partition image and how many of its bytes are entries (the rest is 0xFF).
pub struct Image {
    pub bytes: Zeroizing<Vec<u8>>,
    pub used: usize,
}

/// The partition image (`size` bytes): device certificate, CA chain (issuing CA first)
/// and, when given, the private key (PKCS#8 DER). Refuses an identity that does not fit.
pub fn build(
    cert_der: &[u8],
    chain_der: &[Vec<u8>],
    key_pkcs8: Option<&[u8]>,
    size: u32,
) -> Result<Image> {
    let mut img = Zeroizing::new(Vec::with_capacity(size as usize));
    img.extend(entry(TYPE_DEV_CERT, &pem_z("CERTIFICATE", cert_der))?);
    if !chain_der.is_empty() {
        let mut chain: Vec<u8> = chain_der
            .iter()
            .flat_map(|d| to_pem("CERTIFICATE", d).into_bytes())
            .collect();
        chain.push(0);
        img.extend(entry(TYPE_CA_CERT, &chain)?);
    }
    if let Some(k) = key_pkcs8 {
        let e = Zeroizing::new(entry(TYPE_PRIV_KEY, &pem_z("PRIVATE KEY", k))?);
        img.extend_from_slice(&e);
    }
    if img.len() > size as usize {
        return Err(Error::input(format!(
            "the identity needs {} bytes in esp_secure_cert but the partition is {size} bytes",
            img.len()
        )));
    }
    let used = img.len();
    img.resize(size as usize, 0xFF);
    Ok(Image { bytes: img, used })
}

/// One entry's header: (type, flags, data length), or `None` where the entries end
/// (erased flash or anything that is not an entry).
pub fn header(h: &[u8]) -> Option<(u8, u8, usize)> {
    if h.len() < HEADER_LEN || u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != MAGIC {
        return None;
    }
    Some((h[8], h[4], u16::from_le_bytes([h[10], h[11]]) as usize))
}

/// A parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: u8,
    pub flags: u8,
    pub data: Vec<u8>,
}

/// Walks the entries of an image, checking each CRC.
pub fn parse(img: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some((kind, flags, len)) = header(&img[off.min(img.len())..]) {
        let total = entry_len(len);
        let Some(e) = img.get(off..off + total) else {
            return Err(format!(
                "entry at offset 0x{off:x} runs past the end of the image"
            ));
        };
        let body = &e[..total - 4];
        let want = u32::from_le_bytes(e[total - 4..].try_into().expect("4 bytes"));
        let got = crc32_seeded(body);
        if got != want {
            return Err(format!(
                "entry at offset 0x{off:x}: CRC32 0x{got:08x}, the entry says 0x{want:08x}"
            ));
        }
        out.push(Entry {
            kind,
            flags,
            data: e[HEADER_LEN..HEADER_LEN + len].to_vec(),
        });
        off += total;
    }
    Ok(out)
}

/// The first entry of an image for `cert_der`: its device certificate.
pub fn dev_cert_entry(cert_der: &[u8]) -> Result<Vec<u8>> {
    entry(TYPE_DEV_CERT, &pem_z("CERTIFICATE", cert_der))
}

/// Offset and size of the `esp_secure_cert` partition in an ESP-IDF partition table
/// CSV (`# Name, Type, SubType, Offset, Size, Flags`).
pub fn partition_from_csv(text: &str) -> std::result::Result<(u32, u32), String> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.first() != Some(&"esp_secure_cert") {
            continue;
        }
        let at = |i: usize, what: &str| -> std::result::Result<u32, String> {
            let v = cols.get(i).copied().unwrap_or("");
            if v.is_empty() {
                return Err(format!(
                    "line {}: esp_secure_cert has no {what} (cradle needs it written out)",
                    n + 1
                ));
            }
            parse_size(v).ok_or_else(|| format!("line {}: {what} '{v}' is not a number", n + 1))
        };
        let (offset, size) = (at(3, "offset")?, at(4, "size")?);
        if offset % crate::wire::esp_rom::SECTOR as u32 != 0 {
            return Err(format!(
                "line {}: offset 0x{offset:x} is not on a 4 KiB flash sector",
                n + 1
            ));
        }
        if size == 0 || size > 0x10_0000 {
            return Err(format!(
                "line {}: size 0x{size:x} is not a partition size cradle writes",
                n + 1
            ));
        }
        return Ok((offset, size));
    }
    Err("no esp_secure_cert partition in the table".into())
}

/// A partition table number: decimal, 0x hex, or with a K/M suffix.
pub fn parse_size(v: &str) -> Option<u32> {
    let v = v.trim();
    let (num, mul) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1024),
        b'M' | b'm' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    let n = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok()?,
        None => num.parse().ok()?,
    };
    n.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_zlibs_with_the_ffffffff_seed() {
        // Python: zlib.crc32(b"123456789", 0xffffffff) == 0xd202d277
        assert_eq!(crc32_seeded(b"123456789"), 0xD202_D277);
    }

    #[test]
    fn build_then_parse_and_damage_is_found() {
        let img = build(
            b"cert",
            &[b"ca1".to_vec(), b"ca2".to_vec()],
            Some(b"key"),
            0x2000,
        )
        .unwrap();
        assert!(img.used < 0x2000 && img.used % 16 == 0);
        let img = img.bytes;
        assert_eq!(img.len(), 0x2000);
        let e = parse(&img).unwrap();
        assert_eq!(e.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![1, 0, 2]);
        assert_eq!(
            &img[..entry_len(e[0].data.len())],
            &dev_cert_entry(b"cert").unwrap()[..]
        );
        assert!(e[1].data.ends_with(b"-----END CERTIFICATE-----\n\0"));
        let mut bad = img.to_vec();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(
            parse(&bad).unwrap_err().contains("CRC32"),
            "{:?}",
            parse(&bad)
        );
        assert!(build(&[0u8; 9000], &[], None, 0x2000).is_err());
    }

    #[test]
    fn partition_tables() {
        let t = "# Name, Type, SubType, Offset, Size, Flags\nnvs,data,nvs,0x9000,0x4000,\nesp_secure_cert, 0x3F, , 0xE000, 8K, encrypted\n";
        assert_eq!(partition_from_csv(t).unwrap(), (0xE000, 0x2000));
        assert!(partition_from_csv("nvs,data,nvs,0x9000,0x4000\n").is_err());
        assert!(partition_from_csv("esp_secure_cert,0x3F,,,0x2000\n")
            .unwrap_err()
            .contains("no offset"));
        assert!(partition_from_csv("esp_secure_cert,0x3F,,0xD100,0x2000\n").is_err());
    }
}
