//! SLIP framing (RFC 1055) as Espressif's ROM bootloader uses it: every packet is
//! wrapped in 0xC0, and 0xC0 / 0xDB inside it are sent as 0xDB 0xDC / 0xDB 0xDD.

pub const END: u8 = 0xC0;
pub const ESC: u8 = 0xDB;
pub const ESC_END: u8 = 0xDC;
pub const ESC_ESC: u8 = 0xDD;

/// `packet` framed for the line: END, escaped bytes, END.
pub fn encode(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packet.len() + packet.len() / 32 + 2);
    out.push(END);
    for &b in packet {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            b => out.push(b),
        }
    }
    out.push(END);
    out
}

/// What the decoder made of the bytes between two ENDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slip {
    Packet(Vec<u8>),
    /// A packet with a bad escape or longer than the limit (noise, a damaged line).
    Damaged,
}

/// Splits a byte stream into packets. Bytes outside a packet (boot noise) are dropped;
/// a packet longer than `max` is reported damaged rather than buffered without bound.
pub struct SlipDecoder {
    buf: Vec<u8>,
    in_packet: bool,
    escape: bool,
    bad: bool,
    max: usize,
}

impl SlipDecoder {
    pub fn new(max: usize) -> SlipDecoder {
        SlipDecoder {
            buf: Vec::new(),
            in_packet: false,
            escape: false,
            bad: false,
            max,
        }
    }

    /// Feeds bytes; appends each finished packet to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Slip>) {
        for &b in data {
            if b == END {
                if self.in_packet && (!self.buf.is_empty() || self.bad) {
                    out.push(if self.bad || self.escape {
                        Slip::Damaged
                    } else {
                        Slip::Packet(std::mem::take(&mut self.buf))
                    });
                }
                // An END both closes a packet and may open the next one (back-to-back
                // packets share nothing, but a lone END after noise starts one).
                self.buf.clear();
                self.in_packet = true;
                self.escape = false;
                self.bad = false;
                continue;
            }
            if !self.in_packet || self.bad {
                continue;
            }
            let byte = if self.escape {
                self.escape = false;
                match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    _ => {
                        self.bad = true;
                        continue;
                    }
                }
            } else if b == ESC {
                self.escape = true;
                continue;
            } else {
                b
            };
            if self.buf.len() >= self.max {
                self.bad = true;
                self.buf.clear();
                continue;
            }
            self.buf.push(byte);
        }
    }

    /// Forgets a half-received packet (after a timeout or a resync).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.in_packet = false;
        self.escape = false;
        self.bad = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte_and_splits_packets() {
        let p: Vec<u8> = (0..=255u8).chain([END, ESC, END, END]).collect();
        let mut line = encode(&p);
        line.extend(encode(b"two"));
        let mut d = SlipDecoder::new(1024);
        let mut out = Vec::new();
        // One byte at a time: packets may arrive in any pieces.
        for b in [&b"noise"[..], &line].concat() {
            d.push(&[b], &mut out);
        }
        assert_eq!(out, vec![Slip::Packet(p), Slip::Packet(b"two".to_vec())]);
    }

    #[test]
    fn bad_escapes_and_oversized_packets_are_damaged_not_buffered() {
        let mut d = SlipDecoder::new(8);
        let mut out = Vec::new();
        d.push(&[END, 1, ESC, 0x42, 2, END], &mut out);
        d.push(&[END, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, END], &mut out);
        d.push(&encode(b"ok"), &mut out);
        assert_eq!(
            out,
            vec![Slip::Damaged, Slip::Damaged, Slip::Packet(b"ok".to_vec())]
        );
    }
}
