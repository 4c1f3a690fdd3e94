//! A simulated ESP32 (classic, rev v3.0) in its ROM bootloader's download mode: the
//! subset of the serial protocol that `esptool --no-stub` and cradle use, over a 4 MiB
//! NOR flash (erase sets 0xFF, writes can only clear bits). The factory MAC sits in
//! eFuse BLK0 words 1-2 with its CRC-8, as on the chip; the hardware id is that MAC.
//! Flash persists next to the `--state` file (`<state>.flash`), written sectors only.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use md5::{Digest, Md5};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

use super::device::{Device, Reply};
use super::faults::Rng;
use super::Responder;
use crate::wire::esp_rom::{
    self as rom, checksum, encode_response, rom_err, Command, CHIP_DETECT_MAGIC_REG, EFUSE_RD_BASE,
    ESP32_MAGIC, MAX_PACKET, READ_SLOW_BLOCK, SECTOR,
};
use crate::wire::slip::{Slip, SlipDecoder};

pub const FLASH_SIZE: u32 = 4 * 1024 * 1024;
/// What the simulated chip reports: ESP32-D0WD-V3, revision v3.0.
pub const SIM_MODEL: &str = "ESP32-D0WD-V3";
/// APB_CTL_DATE: bit 31 is the third chip-revision bit.
const APB_CTL_DATE: u32 = 0x3FF6_607C;
const UART_CLKDIV: u32 = 0x3FF4_0014;
const RTCCALICFG1: u32 = 0x3FF5_F06C;
/// SPI0 registers: a write of the USR bit to SPI_CMD runs the command in USR2's low
/// byte on the flash; W0 then holds what it read (esptool's RDID, SFDP, RDSR).
const SPI_CMD: u32 = 0x3FF4_2000;
const SPI_ADDR: u32 = 0x3FF4_2004;
const SPI_W0: u32 = 0x3FF4_2080;
const SPI_USR2: u32 = 0x3FF4_2024;
const SPI_CMD_USR: u32 = 1 << 18;
/// "SFDP" as the flash answers a read of its parameter table at address 0.
const SFDP_SIGNATURE: u32 = 0x5044_4653;
/// The cell the `stuck-bit` fault breaks: the first byte of the default partition.
const STUCK_CELL: u32 = 0xD000;
/// JEDEC id of the simulated flash: Winbond (0xEF), 0x4016 = 4 MiB.
const FLASH_JEDEC: u32 = 0x0016_40EF;

/// A MAC in the form cradle records it: six lower-case hex pairs with colons.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// A factory MAC for simulated device `i`: Espressif's OUI 24:0A:C4, random, then `i`.
pub fn fake_mac(i: usize) -> String {
    let r = Rng::new().next_u64();
    format_mac(&[0x24, 0x0a, 0xc4, (r >> 8) as u8, r as u8, i as u8])
}

/// The factory MAC of simulated device `i`: `--hardware-id` (a MAC; with several
/// devices its last byte counts up), else a random one.
pub fn sim_mac(cfg: &super::SimConfig, i: usize) -> crate::error::Result<String> {
    let Some(h) = &cfg.hardware_id else {
        return Ok(fake_mac(i));
    };
    let mut m = parse_mac(h).ok_or_else(|| {
        crate::error::Error::input(format!(
            "--hardware-id '{h}': an ESP32's hardware id is its MAC, e.g. 24:0a:c4:12:34:56"
        ))
    })?;
    m[5] = m[5].wrapping_add(i as u8);
    Ok(format_mac(&m))
}

/// The eFuse MAC CRC-8 (espefuse's: reflected polynomial 0x8C over the six bytes).
pub fn mac_crc(m: &[u8; 6]) -> u8 {
    let mut c = 0u8;
    for &b in m {
        c ^= b;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x8C } else { c >> 1 };
        }
    }
    c
}

/// eFuse BLK0 words 1 and 2 for `mac` (what esptool's `read_mac` unpacks).
pub fn mac_words(m: &[u8; 6]) -> (u32, u32) {
    let w1 = u32::from_be_bytes([m[2], m[3], m[4], m[5]]);
    let w2 = u32::from_be_bytes([0, mac_crc(m), m[0], m[1]]);
    (w1, w2)
}

/// A flash write in progress (FLASH_BEGIN or FLASH_DEFL_BEGIN).
struct Write {
    offset: u32,
    block: u32,
    blocks: u32,
    /// Compressed writes: the inflater and how many bytes it has produced.
    inflate: Option<(Box<InflateState>, u32)>,
}

pub struct Esp32Responder {
    pub dev: Device,
    mac: [u8; 6],
    dec: SlipDecoder,
    /// Sectors that are not erased, by sector number.
    flash: BTreeMap<u32, Vec<u8>>,
    regs: HashMap<u32, u32>,
    write: Option<Write>,
    /// Flash changed since the last save. Saving (an fsync) waits for a FLASH_END or an
    /// MD5, which every write ends with, so it does not slow each block down.
    dirty: bool,
}

impl Esp32Responder {
    pub fn new(dev: Device) -> Esp32Responder {
        let mac = parse_mac(&dev.state.hardware_id).unwrap_or([0x24, 0x0a, 0xc4, 0, 0, 1]);
        let flash = flash_path(&dev)
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| load_flash(&b))
            .unwrap_or_default();
        Esp32Responder {
            dev,
            mac,
            dec: SlipDecoder::new(MAX_PACKET),
            flash,
            regs: HashMap::new(),
            write: None,
            dirty: false,
        }
    }

    /// `len` flash bytes at `addr` (erased flash reads 0xFF).
    pub fn read(&self, addr: u32, len: u32) -> Vec<u8> {
        (addr..addr.saturating_add(len))
            .map(|a| {
                let b = self
                    .flash
                    .get(&(a / SECTOR as u32))
                    .map_or(0xFF, |s| s[(a as usize) % SECTOR]);
                if a == STUCK_CELL && self.dev.faults.stuck_bit {
                    b & !1
                } else {
                    b
                }
            })
            .collect()
    }

    fn erase(&mut self, addr: u32, len: u32) {
        let first = addr / SECTOR as u32;
        let last = (addr + len).div_ceil(SECTOR as u32);
        for s in first..last {
            self.flash.remove(&s);
        }
    }

    /// NOR semantics: a write can only turn 1 bits into 0.
    fn program(&mut self, addr: u32, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let a = addr + i as u32;
            let s = self
                .flash
                .entry(a / SECTOR as u32)
                .or_insert_with(|| vec![0xFF; SECTOR]);
            s[(a as usize) % SECTOR] &= b;
        }
    }

    fn save_flash(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        if let Some(p) = flash_path(&self.dev) {
            let mut b = Vec::with_capacity(self.flash.len() * (SECTOR + 4));
            for (n, s) in &self.flash {
                b.extend_from_slice(&n.to_le_bytes());
                b.extend_from_slice(s);
            }
            if let Err(e) = crate::outfile::replace_own_file(&p, &b, 0o600) {
                eprintln!("cradle sim: cannot save flash: {e}");
            }
        }
    }

    fn read_reg(&self, addr: u32) -> u32 {
        let (w1, w2) = mac_words(&self.mac);
        match addr {
            CHIP_DETECT_MAGIC_REG => ESP32_MAGIC,
            a if a == EFUSE_RD_BASE + 4 => w1,
            a if a == EFUSE_RD_BASE + 8 => w2,
            // Package D0WD (1), revision bits 0 and 1 set: v3.
            a if a == EFUSE_RD_BASE + 12 => (1 << 9) | (1 << 15),
            // CK8M frequency byte for the ROM's crystal calibration.
            a if a == EFUSE_RD_BASE + 16 => 100,
            a if a == EFUSE_RD_BASE + 20 => 1 << 20,
            APB_CTL_DATE => 1 << 31,
            // 40 MHz crystal at 115200 baud: the divider the ROM's autobaud leaves.
            UART_CLKDIV => 347,
            RTCCALICFG1 => 1024 << 7,
            // SPI_CMD reads 0 (the user command is done); everything else as written.
            a => self.regs.get(&a).copied().unwrap_or(0),
        }
    }

    /// Runs the SPI flash command esptool set up in USR2 (read id, SFDP, status).
    fn spi_user_command(&mut self) {
        let cmd = self.regs.get(&SPI_USR2).copied().unwrap_or(0) & 0xFF;
        let out = match cmd {
            0x9F => FLASH_JEDEC,
            0x5A if self.regs.get(&SPI_ADDR).copied().unwrap_or(0) == 0 => SFDP_SIGNATURE,
            _ => 0,
        };
        self.regs.insert(SPI_W0, out);
    }

    fn step_name(op: u8) -> &'static str {
        match op {
            rom::SYNC => "sync",
            rom::FLASH_BEGIN | rom::FLASH_DEFL_BEGIN => "flash-begin",
            rom::FLASH_DATA | rom::FLASH_DEFL_DATA => "flash-data",
            rom::SPI_FLASH_MD5 => "md5",
            rom::READ_FLASH_SLOW => "read-flash",
            _ => "other",
        }
    }

    fn handle(&mut self, c: &Command) -> Result<(u32, Vec<u8>), u8> {
        let word = |i| c.word(i).ok_or(rom_err::INVALID_MESSAGE);
        match c.op {
            rom::READ_REG => Ok((self.read_reg(word(0)?), vec![])),
            rom::WRITE_REG => {
                // Four words per write (address, value, mask, delay), possibly several.
                if c.data.is_empty() || c.data.len() % 16 != 0 {
                    return Err(rom_err::INVALID_MESSAGE);
                }
                for i in 0..c.data.len() / 16 {
                    let (a, v, mask) = (word(4 * i)?, word(4 * i + 1)?, word(4 * i + 2)?);
                    if a == SPI_CMD {
                        if v & SPI_CMD_USR != 0 {
                            self.spi_user_command();
                        }
                        continue;
                    }
                    let old = self.regs.get(&a).copied().unwrap_or(0);
                    self.regs.insert(a, (old & !mask) | (v & mask));
                }
                Ok((0, vec![]))
            }
            rom::SPI_ATTACH | rom::SPI_SET_PARAMS | rom::CHANGE_BAUDRATE => Ok((0, vec![])),
            rom::FLASH_BEGIN | rom::FLASH_DEFL_BEGIN => {
                let (size, blocks, block, offset) = (word(0)?, word(1)?, word(2)?, word(3)?);
                // The ESP32 ROM takes exactly four words (no encryption flag).
                if c.data.len() != 16
                    || block == 0
                    || block as usize > rom::FLASH_WRITE_SIZE * 16
                    || offset % SECTOR as u32 != 0
                    || offset.checked_add(size).is_none_or(|e| e > FLASH_SIZE)
                {
                    return Err(rom_err::INVALID_MESSAGE);
                }
                self.erase(offset, size);
                self.write = Some(Write {
                    offset,
                    block,
                    blocks,
                    inflate: (c.op == rom::FLASH_DEFL_BEGIN)
                        .then(|| (InflateState::new_boxed(DataFormat::Zlib), 0)),
                });
                self.dirty = true;
                Ok((0, vec![]))
            }
            rom::FLASH_DATA | rom::FLASH_DEFL_DATA => {
                let (len, seq) = (word(0)? as usize, word(1)?);
                let data = c.data.get(16..).ok_or(rom_err::INVALID_MESSAGE)?;
                if data.len() != len {
                    return Err(rom_err::INVALID_MESSAGE);
                }
                if checksum(data) != c.checksum {
                    return Err(rom_err::BAD_CHECKSUM);
                }
                let compressed = c.op == rom::FLASH_DEFL_DATA;
                let Some(w) = self.write.as_mut() else {
                    return Err(rom_err::FAILED);
                };
                if seq >= w.blocks || w.inflate.is_some() != compressed {
                    return Err(rom_err::FAILED);
                }
                let (addr, bytes) = match &mut w.inflate {
                    None => (w.offset + seq * w.block, data.to_vec()),
                    Some((st, done)) => {
                        let out = inflate(st, data).ok_or(rom_err::DEFLATE)?;
                        let at = w.offset + *done;
                        *done += out.len() as u32;
                        (at, out)
                    }
                };
                if addr as u64 + bytes.len() as u64 > FLASH_SIZE as u64 {
                    return Err(rom_err::FLASH_WRITE);
                }
                let mut bytes = bytes;
                if self.dev.faults.hash_mismatch && !bytes.is_empty() {
                    // A bad flash write: one bit does not take; only the MD5 shows it.
                    if let Some(b) = bytes.iter_mut().find(|b| **b != 0) {
                        self.dev.faults.hash_mismatch = false;
                        *b &= *b - 1;
                    }
                }
                self.program(addr, &bytes);
                self.dirty = true;
                Ok((0, vec![]))
            }
            rom::FLASH_END | rom::FLASH_DEFL_END => {
                self.write = None;
                self.save_flash();
                Ok((0, vec![]))
            }
            rom::SPI_FLASH_MD5 => {
                let (addr, len) = (word(0)?, word(1)?);
                if addr.checked_add(len).is_none_or(|e| e > FLASH_SIZE) {
                    return Err(rom_err::FLASH_READ);
                }
                self.save_flash();
                let d = Md5::digest(self.read(addr, len));
                Ok((0, hex::encode(d).into_bytes()))
            }
            rom::READ_FLASH_SLOW => {
                let (addr, len) = (word(0)?, word(1)?);
                if len as usize > READ_SLOW_BLOCK {
                    return Err(rom_err::READ_LENGTH);
                }
                if addr.checked_add(len).is_none_or(|e| e > FLASH_SIZE) {
                    return Err(rom_err::FLASH_READ);
                }
                // Always a 64-byte buffer, whatever was asked for.
                let mut b = self.read(addr, len);
                b.resize(READ_SLOW_BLOCK, 0);
                Ok((0, b))
            }
            // GET_SECURITY_INFO and the stub's commands are not in the ESP32 ROM.
            _ => Err(rom_err::INVALID_MESSAGE),
        }
    }

    fn answer(&mut self, p: &[u8]) -> Reply {
        let Some(c) = Command::parse(p) else {
            return Reply {
                bytes: encode_response(
                    p.get(1).copied().unwrap_or(0),
                    0,
                    &[],
                    Some(rom_err::INVALID_MESSAGE),
                ),
                ..Default::default()
            };
        };
        let mut bytes = Vec::new();
        if c.op == rom::SYNC && self.dev.faults.long_line {
            // A babbling line: a packet that never ends (the host must not buffer it).
            self.dev.faults.long_line = false;
            bytes.push(crate::wire::slip::END);
            bytes.resize(1 << 20, b'A');
        } else if c.op == rom::SYNC {
            if c.data == rom::SYNC_DATA {
                // The ROM answers one SYNC eight times, with a non-zero value.
                for _ in 0..8 {
                    bytes.extend(encode_response(rom::SYNC, 0x2012_0707, &[], None));
                }
            }
        } else {
            match self.handle(&c) {
                Ok((v, d)) => bytes = encode_response(c.op, v, &d, None),
                Err(e) => bytes = encode_response(c.op, 0, &[], Some(e)),
            }
        }
        Reply {
            bytes,
            hangup: self.dev.step(Self::step_name(c.op)),
            ..Default::default()
        }
    }
}

fn inflate(st: &mut InflateState, mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let r = miniz_oxide::inflate::stream::inflate(st, data, &mut buf, MZFlush::None);
        out.extend_from_slice(&buf[..r.bytes_written]);
        data = &data[r.bytes_consumed..];
        match r.status {
            Ok(MZStatus::StreamEnd) => return Some(out),
            Ok(_) if data.is_empty() && r.bytes_written < buf.len() => return Some(out),
            Ok(_) => {}
            Err(miniz_oxide::MZError::Buf) if data.is_empty() => return Some(out),
            Err(_) => return None,
        }
    }
}

fn flash_path(dev: &Device) -> Option<PathBuf> {
    dev.state_path.as_ref().map(|p| {
        let mut s = p.as_os_str().to_owned();
        s.push(".flash");
        PathBuf::from(s)
    })
}

fn load_flash(b: &[u8]) -> BTreeMap<u32, Vec<u8>> {
    b.chunks_exact(SECTOR + 4)
        .map(|c| {
            (
                u32::from_le_bytes(c[..4].try_into().expect("4 bytes")),
                c[4..].to_vec(),
            )
        })
        .collect()
}

impl Responder for Esp32Responder {
    fn feed(&mut self, data: &[u8]) -> Vec<(usize, Reply)> {
        let mut out = Vec::new();
        let mut used = 0;
        let mut packets = Vec::new();
        for &b in data {
            used += 1;
            self.dec.push(&[b], &mut packets);
            for p in packets.drain(..) {
                // A damaged packet gets no answer: the ROM's SLIP layer drops it.
                if let Slip::Packet(p) = p {
                    out.push((used, self.answer(&p)));
                    used = 0;
                }
            }
        }
        out
    }
    fn device(&mut self) -> &mut Device {
        &mut self.dev
    }
    fn rx_fifo(&self) -> Option<usize> {
        Some(rom::RX_FIFO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_words_are_what_esptool_unpacks() {
        let m = [0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56];
        let (w1, w2) = mac_words(&m);
        // esptool: struct.pack(">II", efuse(2), efuse(1))[2:8]
        let mut b = w2.to_be_bytes().to_vec();
        b.extend(w1.to_be_bytes());
        assert_eq!(&b[2..8], &m);
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
    }
}
