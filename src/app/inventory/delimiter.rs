//! The field delimiter of an inventory CSV: `,` (RFC 4180), `;` (what Excel and
//! LibreOffice write where the decimal separator is a comma) or TAB. Import sniffs it
//! from the header line unless told; export writes `,` unless told.

use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Delimiter {
    #[default]
    #[serde(rename = ",")]
    Comma,
    #[serde(rename = ";")]
    Semicolon,
    #[serde(rename = "tab")]
    Tab,
}

impl Delimiter {
    pub const ALL: [Delimiter; 3] = [Delimiter::Comma, Delimiter::Semicolon, Delimiter::Tab];

    pub fn byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
        }
    }

    /// How it is named on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Delimiter::Comma => ",",
            Delimiter::Semicolon => ";",
            Delimiter::Tab => "tab",
        }
    }

    /// `,` `comma` `;` `semicolon` `tab` (or a TAB character).
    pub fn parse(s: &str) -> Option<Delimiter> {
        match s {
            "," | "comma" => Some(Delimiter::Comma),
            ";" | "semicolon" => Some(Delimiter::Semicolon),
            "tab" | "\t" => Some(Delimiter::Tab),
            _ => None,
        }
    }

    /// Picks the delimiter of a file from the start of its header line (`head`: the
    /// first bytes of the file, BOM removed): the one of `,` `;` TAB that occurs most
    /// often outside quotes before the first line break. A header with none of them
    /// is one column (`,`); a tie is refused, naming the counts.
    pub fn sniff(file: &str, head: &[u8]) -> Result<Delimiter> {
        let mut counts = [0usize; 3];
        let mut quoted = false;
        for &b in head {
            match b {
                b'"' => quoted = !quoted,
                b'\n' | b'\r' if !quoted => break,
                _ if !quoted => {
                    if let Some(i) = Delimiter::ALL.iter().position(|d| d.byte() == b) {
                        counts[i] += 1;
                    }
                }
                _ => {}
            }
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        if max == 0 {
            return Ok(Delimiter::Comma);
        }
        let best: Vec<Delimiter> = Delimiter::ALL
            .into_iter()
            .zip(counts)
            .filter(|&(_, n)| n == max)
            .map(|(d, _)| d)
            .collect();
        if best.len() > 1 {
            let names = best
                .iter()
                .map(|d| format!("{max} '{}'", d.name()))
                .collect::<Vec<_>>()
                .join(" and ");
            return Err(Error::input_at(
                file,
                1,
                format!("cannot tell the delimiter: the header line has {names}; pass --delimiter ',', ';' or tab"),
            ));
        }
        Ok(best[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_header_line_only_and_ignores_quoted_text() {
        let s = |h: &[u8]| Delimiter::sniff("f", h);
        assert_eq!(s(b"serial,site\r\na;b;c;d").unwrap(), Delimiter::Comma);
        assert_eq!(
            s(b"serial;site;mac\n1,2,3,4,5").unwrap(),
            Delimiter::Semicolon
        );
        assert_eq!(s(b"serial\tsite\n").unwrap(), Delimiter::Tab);
        assert_eq!(s(b"\"a,b,c\";site\n").unwrap(), Delimiter::Semicolon);
        assert_eq!(s(b"serial\n").unwrap(), Delimiter::Comma);
        let e = s(b"serial,site;mac\n").unwrap_err().to_string();
        assert!(e.contains("1 ',' and 1 ';'"), "{e}");
    }
}
