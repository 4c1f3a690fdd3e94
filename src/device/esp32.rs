//! ESP32s in their ROM bootloader (download mode) as a device link: SYNC, the chip
//! magic word says ESP32, the factory MAC from eFuse is the hardware id, and the
//! identity is written as Espressif's `esp_secure_cert` partition (TLV) with
//! FLASH_BEGIN/FLASH_DATA, then checked with the chip's own SPI_FLASH_MD5 of the whole
//! partition. No firmware of ours runs on the chip; the ROM cannot make keys, so the
//! host makes them (`--mode inject`) and forgets them once written.
//!
//! The ROM has no LOCK: the identity counts as burned once the flash MD5 matches.
//! Writes erase and rewrite the whole partition, so a failed run is simply run again.

use std::io::{Read, Write};
use std::path::Path;

use md5::{Digest, Md5};

use super::{
    Burn, DeviceKey, DeviceLink, DeviceProfile, Identity, LinkParams, LinkStats, OnProgress,
};
use crate::pki::esp_secure_cert::{self as esc, DEFAULT_OFFSET, DEFAULT_SIZE};
use crate::wire::esp_rom::{
    md5_reply, retryable, EspSession, Request, ATTEMPTS, CHIP_DETECT_MAGIC_REG, EFUSE_RD_BASE,
    ESP32_MAGIC, FLASH_WRITE_SIZE,
};
use crate::wire::{self, WireError};

/// What cradle tells the ROM the flash holds (SPI_SET_PARAMS); 4 MiB is the smallest
/// flash of ESP32 modules that carry an `esp_secure_cert` partition.
pub const FLASH_SIZE: u32 = 4 * 1024 * 1024;
/// The ROM bootloader reports no application firmware: cradle records this (see
/// [`super::NO_APP_FIRMWARE`]); the chip revision is in the model name.
pub const FIRMWARE: &str = super::NO_APP_FIRMWARE;

/// Where the `esp_secure_cert` partition is: (offset, size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub offset: u32,
    pub size: u32,
}

impl Default for Partition {
    fn default() -> Self {
        Partition {
            offset: DEFAULT_OFFSET,
            size: DEFAULT_SIZE,
        }
    }
}

pub struct Esp32Link<T: Read + Write = wire::Port> {
    s: EspSession<T>,
    part: Partition,
    synced: bool,
    attached: bool,
    /// MD5 of the partition image this run wrote.
    written_md5: Option<[u8; 16]>,
    /// The chip's MD5 of (address, length) asked right behind the last FLASH_DATA
    /// block: the first answer of the read-back.
    early_md5: Option<(u32, u32, [u8; 16])>,
    /// The block size a FLASH_BEGIN of `ready_write` readied the partition for (erased,
    /// for the image in `pending`), not yet written.
    begun: Option<usize>,
    /// The image itself (it holds the key), kept only until it is verified, so that a
    /// write damaged on the line (a garbled block number: only the data is checksummed)
    /// is written once more; zeroised when dropped.
    pending: Option<esc::Image>,
}

impl Esp32Link<wire::Port> {
    pub fn open(port: &Path, params: LinkParams) -> Result<Self, WireError> {
        let s = EspSession::new(
            wire::open_port(port, params.baud)?,
            params.baud,
            params.timeout,
        );
        Ok(Esp32Link::over(s, params.esp_partition.unwrap_or_default()))
    }
}

/// APB_CTL_DATE: its bit 31 is the third chip-revision bit.
const APB_CTL_DATE: u32 = 0x3FF6_607C;

/// The chip's name from eFuse BLK0 words 3 and 5 and APB_CTL_DATE, as esptool names it.
fn model(w3: u32, w5: u32, apb_date: u32) -> String {
    let pkg = ((w3 >> 9) & 7) | (((w3 >> 2) & 1) << 3);
    let rev = match ((apb_date >> 31) << 2) | (((w5 >> 20) & 1) << 1) | ((w3 >> 15) & 1) {
        1 => 1,
        3 => 2,
        7 => 3,
        _ => 0,
    };
    let v3 = if rev == 3 { "-V3" } else { "" };
    let name = match pkg {
        0 => format!("ESP32-D0WDQ6{v3}"),
        1 => format!("ESP32-D0WD{v3}"),
        2 => "ESP32-D2WD".into(),
        4 => "ESP32-U4WDH".into(),
        5 if rev == 3 => "ESP32-PICO-V3".into(),
        5 => "ESP32-PICO-D4".into(),
        6 => "ESP32-PICO-V3-02".into(),
        7 => "ESP32-D0WDR2-V3".into(),
        _ => "ESP32".into(),
    };
    name
}

fn identity(mac: [u8; 6], w3: u32, w5: u32, apb_date: u32) -> Identity {
    Identity {
        hardware_id: crate::sim::esp32::format_mac(&mac),
        serial: None,
        model: model(w3, w5, apb_date),
        firmware: FIRMWARE.into(),
        imei: None,
        sealed: false,
    }
}

/// The MAC from eFuse words 1 and 2, checked against its CRC-8 in word 2.
pub fn mac_from_words(w1: u32, w2: u32) -> Result<[u8; 6], WireError> {
    let b2 = w2.to_be_bytes();
    let b1 = w1.to_be_bytes();
    let mac = [b2[2], b2[3], b1[0], b1[1], b1[2], b1[3]];
    let crc = crate::sim::esp32::mac_crc(&mac);
    // espefuse computes esp_crc8 over the six bytes; whether in this order or reversed
    // is not checked against a real chip here, so either is taken (the double read
    // guards against noise anyway) rather than refusing real boards.
    let mut rev = mac;
    rev.reverse();
    if crc != b2[1] && crate::sim::esp32::mac_crc(&rev) != b2[1] {
        return Err(WireError::Verify(format!(
            "eFuse MAC {} fails its CRC-8 (0x{:02x}, computed 0x{crc:02x}); the eFuse read was garbled or the chip is not an ESP32",
            crate::sim::esp32::format_mac(&mac),
            b2[1]
        )));
    }
    Ok(mac)
}

/// FLASH_DATA block sizes, largest first. FLASH_DATA's checksum is one XOR byte: two
/// flips of the same bit in a block cancel out, so a write the MD5 refuses is redone
/// with smaller blocks (fewer flips per block).
const BLOCK_SIZES: [usize; 3] = [
    FLASH_WRITE_SIZE,
    FLASH_WRITE_SIZE / 4,
    FLASH_WRITE_SIZE / 16,
];
/// Rewrites after the chip's MD5 refused a write (each with smaller blocks).
const REWRITES: usize = 3;

impl<T: Read + Write> Esp32Link<T> {
    pub fn over(s: EspSession<T>, part: Partition) -> Self {
        Esp32Link {
            s,
            part,
            synced: false,
            attached: false,
            written_md5: None,
            early_md5: None,
            begun: None,
            pending: None,
        }
    }

    fn sync(&mut self) -> Result<(), WireError> {
        if !self.synced {
            self.s.sync()?;
            self.synced = true;
        }
        Ok(())
    }

    fn attach(&mut self) -> Result<(), WireError> {
        self.attach_then(None)?;
        Ok(())
    }

    /// Attaches the flash (once per session) and runs `then` behind it, pipelined:
    /// SPI_ATTACH, SPI_SET_PARAMS and FLASH_BEGIN are small enough to go in one write.
    fn attach_then(&mut self, then: Option<Request>) -> Result<(), WireError> {
        let mut reqs = Vec::new();
        if !self.attached {
            self.sync()?;
            reqs.push(Request::spi_attach());
            reqs.push(Request::spi_set_params(FLASH_SIZE));
        }
        reqs.extend(then);
        self.s.pipeline_or_each(&reqs)?;
        self.attached = true;
        Ok(())
    }

    /// Reads the factory MAC twice (no checksum protects a READ_REG reply) and checks
    /// its CRC, so line noise never becomes another device's hardware id.
    fn read_mac(&mut self) -> Result<[u8; 6], WireError> {
        let mut seen: Vec<(u32, u32)> = Vec::new();
        for _ in 0..6 {
            let w1 = self.s.read_reg(EFUSE_RD_BASE + 4)?;
            let w2 = self.s.read_reg(EFUSE_RD_BASE + 8)?;
            // A sentinel of known value: READ_REG replies do not name the register, so
            // a reply that is one request late (a resend's stale twin) shows here.
            if self.s.read_reg(CHIP_DETECT_MAGIC_REG)? != ESP32_MAGIC {
                self.s.resync()?;
                continue;
            }
            if seen.contains(&(w1, w2)) {
                return mac_from_words(w1, w2);
            }
            seen.push((w1, w2));
        }
        Err(WireError::Verify(
            "the eFuse MAC never read the same twice in six reads (line noise?)".into(),
        ))
    }

    /// Identifies the chip: an ESP32 by its magic word, named by its MAC. After SYNC,
    /// one pipelined round trip: the magic word, the eFuse words, the MAC words once
    /// more and the magic word again (a reply lost or shifted shows in the second MAC
    /// read or the closing magic word). Anything odd is read again one at a time.
    pub fn chip(&mut self) -> Result<Identity, WireError> {
        self.sync()?;
        let regs = [
            CHIP_DETECT_MAGIC_REG,
            EFUSE_RD_BASE + 4,
            EFUSE_RD_BASE + 8,
            EFUSE_RD_BASE + 12,
            EFUSE_RD_BASE + 20,
            APB_CTL_DATE,
            EFUSE_RD_BASE + 4,
            EFUSE_RD_BASE + 8,
            CHIP_DETECT_MAGIC_REG,
        ];
        match self.s.pipeline(&regs.map(Request::read_reg)) {
            Ok(v) => {
                let v: Vec<u32> = v.into_iter().map(|r| r.0).collect();
                if v[0] == ESP32_MAGIC && v[8] == ESP32_MAGIC && v[1..3] == v[6..8] {
                    return Ok(identity(mac_from_words(v[1], v[2])?, v[3], v[4], v[5]));
                }
            }
            // A chip that is not an ESP32 may reset on reads of the ESP32's eFuse
            // addresses: synchronise again, then the magic word comes first.
            Err(WireError::Timeout { .. }) => self.s.sync()?,
            Err(e) if retryable(&e) => {}
            Err(e) => return Err(e),
        }
        self.chip_one_by_one()
    }

    fn chip_one_by_one(&mut self) -> Result<Identity, WireError> {
        let mut magic = self.s.read_reg(CHIP_DETECT_MAGIC_REG)?;
        if magic != ESP32_MAGIC {
            // Once more: a garbled READ_REG reads another word.
            magic = self.s.read_reg(CHIP_DETECT_MAGIC_REG)?;
        }
        if magic != ESP32_MAGIC {
            return Err(WireError::Unexpected(format!(
                "the chip's magic word is 0x{magic:08x}, not the ESP32's 0x{ESP32_MAGIC:08x}: cradle's esp32 profile speaks to the ESP32 (classic) ROM only"
            )));
        }
        let mac = self.read_mac()?;
        let w3 = self.s.read_reg(EFUSE_RD_BASE + 12)?;
        let w5 = self.s.read_reg(EFUSE_RD_BASE + 20)?;
        let apb = self.s.read_reg(APB_CTL_DATE)?;
        Ok(identity(mac, w3, w5, apb))
    }

    /// Erases the partition and writes `image` (its first `used` bytes; the rest of the
    /// partition stays erased, which is what the image holds there). The ROM's 1 KiB
    /// block first (`smaller` steps down from it); on a line too noisy for a block to get
    /// through in its attempts, the whole write starts over (FLASH_BEGIN erases again)
    /// with smaller blocks.
    pub fn write_image(
        &mut self,
        image: &[u8],
        used: usize,
        smaller: usize,
        progress: &mut OnProgress<'_>,
    ) -> Result<(), WireError> {
        self.attach()?;
        self.written_md5 = Some(Md5::digest(image).into());
        let mut last = None;
        for size in BLOCK_SIZES
            .into_iter()
            .skip(smaller.min(BLOCK_SIZES.len() - 1))
        {
            match self.write_blocks(image, used, size, progress) {
                Ok(()) => return Ok(()),
                // What a noisy line causes, and a smaller block can get past.
                Err(e) if crate::wire::esp_rom::retryable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one block size"))
    }

    fn write_blocks(
        &mut self,
        image: &[u8],
        used: usize,
        size: usize,
        progress: &mut OnProgress<'_>,
    ) -> Result<(), WireError> {
        let blocks = used.div_ceil(size);
        let total = (blocks * size) as u64;
        progress("erase", 0, total);
        self.early_md5 = None;
        if self.begun.take() != Some(size) {
            self.attach_then(Some(Request::flash_begin(
                self.part.size,
                blocks as u32,
                size as u32,
                self.part.offset,
            )))?;
        }
        let (addr, len) = (self.part.offset, self.part.size);
        for seq in 0..blocks {
            progress("write esp_secure_cert", (seq * size) as u64, total);
            let at = seq * size;
            let mut block =
                zeroize::Zeroizing::new(image[at..(at + size).min(image.len())].to_vec());
            block.resize(size, 0xFF);
            let data = Request::flash_data(seq as u32, &block);
            if seq + 1 < blocks {
                self.s.request(&data)?;
                continue;
            }
            // The read-back's MD5 goes right behind the last block (it fits in the ROM's
            // FIFO while the block is written): no round trip of its own.
            match self
                .s
                .pipeline(&[data.clone(), Request::flash_md5(addr, len)])
            {
                Ok(r) => self.early_md5 = md5_reply(&r[1].1).map(|d| (addr, len, d)),
                Err(e) if retryable(&e) => {
                    self.s.request(&data)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether the chip's MD5 of `len` flash bytes at `addr` is `want`. No request or
    /// reply carries a checksum, but an MD5 answer cannot match by accident: a match is
    /// believed at once, a mismatch only when the chip gives the same answer twice in a
    /// row (a garbled request hashes some other range). `Err` with the last answer when
    /// the answers never settle.
    fn md5_is(
        &mut self,
        addr: u32,
        len: u32,
        want: [u8; 16],
    ) -> Result<Result<(), [u8; 16]>, WireError> {
        let mut last = None;
        let mut early = self
            .early_md5
            .take()
            .filter(|e| (e.0, e.1) == (addr, len))
            .map(|e| e.2);
        for _ in 0..ATTEMPTS + 2 {
            let got = match early.take() {
                Some(d) => d,
                None => self.s.flash_md5(addr, len)?,
            };
            if got == want {
                return Ok(Ok(()));
            }
            if last == Some(got) {
                return Ok(Err(got));
            }
            self.s.retries += 1;
            last = Some(got);
        }
        Err(WireError::Verify(
            "the chip's flash MD5 answers differ each time (line noise?)".into(),
        ))
    }

    /// Fails unless the chip's MD5 of the whole partition is `want`.
    pub fn check_md5(&mut self, want: [u8; 16], what: &str) -> Result<(), WireError> {
        self.attach()?;
        match self.md5_is(self.part.offset, self.part.size, want)? {
            Ok(()) => Ok(()),
            Err(got) => Err(WireError::Verify(format!(
                "read-back: the chip's flash MD5 of the esp_secure_cert partition (0x{:x}, {} bytes) is {}, {what} has {}",
                self.part.offset,
                self.part.size,
                hex::encode(got),
                hex::encode(want)
            ))),
        }
    }

    /// Erases the partition and checks, by the chip's MD5, that it reads back erased.
    pub fn erase_partition(&mut self) -> Result<[u8; 16], WireError> {
        self.attach_then(Some(Request::flash_begin(
            self.part.size,
            0,
            FLASH_WRITE_SIZE as u32,
            self.part.offset,
        )))?;
        let erased: [u8; 16] = Md5::digest(vec![0xFFu8; self.part.size as usize]).into();
        self.check_md5(erased, "erased flash")?;
        Ok(erased)
    }

    /// Whether the partition starts with the device certificate entry for `cert_der`
    /// (cradle writes it first), by the chip's MD5 of that range (READ_FLASH_SLOW
    /// replies carry no checksum; an MD5 cannot match by accident).
    pub fn holds_cert(&mut self, cert_der: &[u8]) -> Result<bool, WireError> {
        self.attach()?;
        let entry =
            esc::dev_cert_entry(cert_der).map_err(|e| WireError::Unexpected(e.to_string()))?;
        if entry.len() > self.part.size as usize {
            return Ok(false);
        }
        let want: [u8; 16] = Md5::digest(&entry).into();
        Ok(self
            .md5_is(self.part.offset, entry.len() as u32, want)?
            .is_ok())
    }

    /// The `esp_secure_cert` partition image of `burn`.
    fn image(&self, burn: &Burn<'_>) -> Result<esc::Image, WireError> {
        esc::build(
            burn.cert_der,
            burn.chain_der,
            burn.key.as_deref().map(|k| &k[..]),
            self.part.size,
        )
        .map_err(|e| WireError::Unexpected(e.to_string()))
    }

    pub fn partition(&self) -> Partition {
        self.part
    }
}

impl<T: Read + Write> super::WipeLink for Esp32Link<T> {
    fn hardware_id(&mut self) -> crate::error::Result<String> {
        Ok(self.chip()?.hardware_id)
    }

    fn contact(&mut self) -> crate::error::Result<(String, Option<String>)> {
        let c = self.chip()?;
        Ok((c.hardware_id, Some(c.firmware)))
    }

    fn wipe(
        &mut self,
        _nonce: [u8; 32],
    ) -> crate::error::Result<crate::attestation::WipeAttestation> {
        Err(crate::Error::Device(
            "the ESP32 ROM bootloader cannot sign a wipe attestation; cradle erases and reads back instead".into(),
        ))
    }

    fn reads_back(&self) -> bool {
        true
    }

    fn wipe_read_back(&mut self) -> crate::error::Result<super::ReadBackWipe> {
        let hardware_id = self.chip()?.hardware_id;
        let digest = hex::encode(self.erase_partition()?);
        let how = "ROM bootloader FLASH_BEGIN (erase), then the chip's SPI_FLASH_MD5 of the region";
        let (offset, size) = (self.part.offset, self.part.size);
        Ok(super::ReadBackWipe {
            method: format!(
                "erase of the esp_secure_cert partition (0x{offset:x}, {size} bytes) over the device's ROM bootloader, read back as erased"
            ),
            verification: format!(
                "read back: the device's MD5 of the region is {digest}, that of erased flash (not device-signed: the ROM cannot sign)"
            ),
            tool: format!("cradle: {how}"),
            media_type: "device SPI flash (identity partition)".into(),
            evidence: Some(serde_json::json!({
                "hardware_id": hardware_id,
                "region": "esp_secure_cert partition",
                "offset": offset,
                "size": size,
                "digest_alg": "md5",
                "digest": digest,
                "how": how,
            })),
            hardware_id: Some(hardware_id),
        })
    }
}

impl<T: Read + Write + Send> DeviceLink for Esp32Link<T> {
    fn profile(&self) -> DeviceProfile {
        DeviceProfile::Esp32
    }

    fn identify(&mut self) -> Result<Identity, WireError> {
        self.chip()
    }

    fn seals(&self) -> bool {
        false
    }

    fn warm_up(&mut self) -> Result<(), WireError> {
        self.attach()
    }

    fn generate_key(&mut self) -> Result<DeviceKey, WireError> {
        Err(WireError::Unexpected(
            "the ESP32 ROM bootloader cannot make keys: provision ESP32s with --mode inject".into(),
        ))
    }

    fn ready_write(&mut self, burn: &Burn<'_>) -> Result<(), WireError> {
        self.begun = None;
        let img = self.image(burn)?;
        let blocks = img.used.div_ceil(FLASH_WRITE_SIZE) as u32;
        self.pending = Some(img);
        // The erase, while the host commits the record (on a chip, tens of ms).
        self.attach_then(Some(Request::flash_begin(
            self.part.size,
            blocks,
            FLASH_WRITE_SIZE as u32,
            self.part.offset,
        )))?;
        self.begun = Some(FLASH_WRITE_SIZE);
        Ok(())
    }

    fn write_identity(
        &mut self,
        burn: &mut Burn<'_>,
        progress: &mut OnProgress<'_>,
    ) -> Result<(), WireError> {
        // The key is in the image only now (built by `ready_write` or here); `burn`'s
        // copy is zeroised here, the image once verified.
        let img = match self.pending.take() {
            Some(img) => img,
            None => self.image(burn)?,
        };
        drop(burn.key.take());
        let r = self.write_image(&img.bytes, img.used, 0, progress);
        self.pending = Some(img);
        r
    }

    fn verify_identity(&mut self, _cert: &[u8], _chain: &[Vec<u8>]) -> Result<(), WireError> {
        let want = self
            .written_md5
            .ok_or_else(|| WireError::Protocol("read-back before any write".into()))?;
        let mut r = self.check_md5(want, "the image written");
        // Written again on a mismatch, with smaller blocks; a flash that still disagrees
        // after that fails the run.
        if let Some(img) = self.pending.take() {
            for n in 1..=REWRITES {
                // A mismatch, or noise that stopped a rewrite: write again.
                match &r {
                    Err(WireError::Verify(_)) => {}
                    Err(e) if crate::wire::esp_rom::retryable(e) => {}
                    _ => break,
                }
                self.s.retries += 1;
                r = self
                    .write_image(&img.bytes, img.used, n, &mut |_, _, _| {})
                    .and_then(|()| self.check_md5(want, "the image written"));
            }
        }
        r
    }

    fn seal(&mut self) -> Result<(), WireError> {
        Ok(())
    }

    fn holds(&mut self, cert_der: &[u8]) -> Result<bool, WireError> {
        self.holds_cert(cert_der)
    }

    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "esp_secure_cert_offset".into(),
            format!("0x{:x}", self.part.offset).into(),
        );
        m.insert(
            "esp_secure_cert_size".into(),
            format!("0x{:x}", self.part.size).into(),
        );
        m.insert("round_trips".into(), self.s.round_trips.into());
        m
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            wire_bytes: self.s.tx_bytes + self.s.rx_bytes,
            retries: self.s.retries,
            ..LinkStats::default()
        }
    }
}
