//! Espressif's ROM bootloader serial protocol (ESP32), both ends: the packet codec the
//! simulator answers with, and the host session cradle drives. Packets are SLIP framed
//! (`wire::slip`); a command is `[0x00, op, len16, checksum32, data]`, a response
//! `[0x01, op, len16, value32, data, status, error, 0, 0]` (the ESP32 ROM sends four
//! status bytes). The host speaks only what a provisioning run needs: SYNC, READ_REG,
//! SPI_ATTACH, SPI_SET_PARAMS, FLASH_BEGIN/DATA and SPI_FLASH_MD5 (which also reads
//! back: READ_FLASH_SLOW replies carry no checksum, an MD5 cannot match by accident).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::slip::{self, Slip, SlipDecoder};
use super::WireError;

pub const FLASH_BEGIN: u8 = 0x02;
pub const FLASH_DATA: u8 = 0x03;
pub const FLASH_END: u8 = 0x04;
pub const SYNC: u8 = 0x08;
pub const WRITE_REG: u8 = 0x09;
pub const READ_REG: u8 = 0x0A;
pub const SPI_SET_PARAMS: u8 = 0x0B;
pub const SPI_ATTACH: u8 = 0x0D;
pub const READ_FLASH_SLOW: u8 = 0x0E;
pub const CHANGE_BAUDRATE: u8 = 0x0F;
pub const FLASH_DEFL_BEGIN: u8 = 0x10;
pub const FLASH_DEFL_DATA: u8 = 0x11;
pub const FLASH_DEFL_END: u8 = 0x12;
pub const SPI_FLASH_MD5: u8 = 0x13;
pub const GET_SECURITY_INFO: u8 = 0x14;

/// The SYNC payload: 07 07 12 20 and 32 bytes of 0x55 (autobaud pattern).
pub const SYNC_DATA: [u8; 36] = {
    let mut d = [0x55u8; 36];
    d[0] = 0x07;
    d[1] = 0x07;
    d[2] = 0x12;
    d[3] = 0x20;
    d
};

/// Register whose value names the chip (a ROM word that differs per chip model).
pub const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
/// The ESP32's value there.
pub const ESP32_MAGIC: u32 = 0x00F0_1D83;
/// eFuse read registers (BLK0 word n at base + 4n); the factory MAC is in words 1 and 2.
pub const EFUSE_RD_BASE: u32 = 0x3FF5_A000;

/// Flash write block the ROM takes per FLASH_DATA.
pub const FLASH_WRITE_SIZE: usize = 0x400;
/// Bytes READ_FLASH_SLOW returns per command.
pub const READ_SLOW_BLOCK: usize = 64;
/// Flash erase sector.
pub const SECTOR: usize = 0x1000;
/// The ESP32 UART's receive FIFO, all the ROM has while it works on a command (it
/// reads its line only between commands): a host may have at most this many bytes on
/// the way behind the command being answered, or the ROM loses some.
pub const RX_FIFO: usize = 128;
/// Largest packet either end accepts (a FLASH_DATA with its header, and room to spare).
pub const MAX_PACKET: usize = 16 + FLASH_WRITE_SIZE * 16;

/// ROM error codes (the second status byte).
pub mod rom_err {
    pub const INVALID_MESSAGE: u8 = 0x05;
    pub const FAILED: u8 = 0x06;
    pub const BAD_CHECKSUM: u8 = 0x07;
    pub const FLASH_WRITE: u8 = 0x08;
    pub const FLASH_READ: u8 = 0x09;
    pub const READ_LENGTH: u8 = 0x0A;
    pub const DEFLATE: u8 = 0x0B;

    pub fn name(c: u8) -> &'static str {
        match c {
            INVALID_MESSAGE => "received message is invalid",
            FAILED => "failed to act on received message",
            BAD_CHECKSUM => "invalid CRC in message",
            FLASH_WRITE => "flash write error",
            FLASH_READ => "flash read error",
            READ_LENGTH => "flash read length error",
            DEFLATE => "deflate error",
            _ => "unknown error",
        }
    }
}

/// The FLASH_DATA checksum: 0xEF XOR every data byte.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0xEFu8, |a, b| a ^ b) as u32
}

/// A command as the device receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub op: u8,
    pub checksum: u32,
    pub data: Vec<u8>,
}

impl Command {
    /// Encodes a command packet, SLIP framed.
    pub fn encode(op: u8, data: &[u8], chk: u32) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + data.len());
        p.extend_from_slice(&[0x00, op]);
        p.extend_from_slice(&(data.len() as u16).to_le_bytes());
        p.extend_from_slice(&chk.to_le_bytes());
        p.extend_from_slice(data);
        slip::encode(&p)
    }

    /// Parses a packet (SLIP already removed). `None`: not a well-formed command.
    pub fn parse(p: &[u8]) -> Option<Command> {
        if p.len() < 8 || p[0] != 0x00 {
            return None;
        }
        let len = u16::from_le_bytes([p[2], p[3]]) as usize;
        if len != p.len() - 8 {
            return None;
        }
        Some(Command {
            op: p[1],
            checksum: u32::from_le_bytes([p[4], p[5], p[6], p[7]]),
            data: p[8..].to_vec(),
        })
    }

    /// Little-endian u32 word `i` of the data.
    pub fn word(&self, i: usize) -> Option<u32> {
        let b = self.data.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A response packet, SLIP framed: `data` then the four ESP32 ROM status bytes.
pub fn encode_response(op: u8, value: u32, data: &[u8], error: Option<u8>) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + data.len());
    p.extend_from_slice(&[0x01, op]);
    p.extend_from_slice(&((data.len() + 4) as u16).to_le_bytes());
    p.extend_from_slice(&value.to_le_bytes());
    p.extend_from_slice(data);
    match error {
        None => p.extend_from_slice(&[0, 0, 0, 0]),
        Some(e) => p.extend_from_slice(&[1, e, 0, 0]),
    }
    slip::encode(&p)
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    op: u8,
    value: u32,
    /// Data and status bytes.
    body: Vec<u8>,
}

fn parse_response(p: &[u8]) -> Option<Response> {
    if p.len() < 8 || p[0] != 0x01 {
        return None;
    }
    let len = u16::from_le_bytes([p[2], p[3]]) as usize;
    if len != p.len() - 8 {
        return None;
    }
    Some(Response {
        op: p[1],
        value: u32::from_le_bytes([p[4], p[5], p[6], p[7]]),
        body: p[8..].to_vec(),
    })
}

/// Attempts per command (first try included). Every command cradle sends is idempotent
/// (a re-erase, a re-write of the same block, a read), so a lost reply is simply resent.
pub const ATTEMPTS: u32 = 6;

/// A host session with an ESP32 ROM bootloader.
pub struct EspSession<T: Read + Write> {
    port: T,
    dec: SlipDecoder,
    packets: VecDeque<Slip>,
    /// For commands the flash makes slow (erase, MD5).
    timeout: Duration,
    /// For everything else: the ROM answers within milliseconds.
    short: Duration,
    byte_time: Duration,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub retries: u32,
    /// Writes to the line, each followed by a wait for a reply: the round trips.
    pub round_trips: u32,
}

impl<T: Read + Write> EspSession<T> {
    /// `port` should have a short read timeout (tens of ms); deadlines are kept here.
    pub fn new(port: T, baud: u32, timeout: Duration) -> EspSession<T> {
        EspSession {
            port,
            dec: SlipDecoder::new(MAX_PACKET),
            packets: VecDeque::new(),
            timeout,
            short: timeout.min(Duration::from_millis(400)),
            byte_time: Duration::from_secs_f64(10.0 / baud.max(1) as f64),
            tx_bytes: 0,
            rx_bytes: 0,
            retries: 0,
            round_trips: 0,
        }
    }

    fn fill(&mut self) -> Result<(), WireError> {
        let mut buf = [0u8; 4096];
        match self.port.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => {
                self.rx_bytes += n as u64;
                let mut out = Vec::new();
                self.dec.push(&buf[..n], &mut out);
                self.packets.extend(out);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Err(WireError::Disconnected),
            Err(e) => Err(WireError::Io(e)),
        }
    }

    /// Drops whatever arrives within `quiet` (stale replies before a resend).
    fn drain(&mut self, quiet: Duration) -> Result<(), WireError> {
        let end = Instant::now() + quiet;
        while Instant::now() < end {
            self.fill()?;
        }
        self.packets.clear();
        self.dec.reset();
        Ok(())
    }

    fn send(&mut self, op: u8, data: &[u8], chk: u32) -> Result<usize, WireError> {
        let pkt = Zeroizing::new(Command::encode(op, data, chk));
        self.send_raw(&pkt)?;
        Ok(pkt.len())
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.port.write_all(bytes).map_err(|e| {
            if e.raw_os_error() == Some(libc::EIO) {
                WireError::Disconnected
            } else {
                WireError::Io(e)
            }
        })?;
        self.port.flush()?;
        self.tx_bytes += bytes.len() as u64;
        self.round_trips += 1;
        Ok(())
    }

    /// One try: send, then wait for the response with the same op.
    fn exchange(
        &mut self,
        what: &str,
        op: u8,
        data: &[u8],
        chk: u32,
        resp_len: usize,
        wait: Duration,
    ) -> Result<(u32, Vec<u8>), WireError> {
        let sent = self.send(op, data, chk)?;
        // The line time of the request and of a full reply come on top of the device's own.
        let line = self.byte_time * (sent + resp_len * 2 + 32) as u32;
        self.receive(what, op, resp_len, wait + line)
    }

    /// Waits up to `wait` for the response with op `op`. Other packets (extra SYNC
    /// replies, stale answers) are skipped; a damaged one fails the try.
    fn receive(
        &mut self,
        what: &str,
        op: u8,
        resp_len: usize,
        wait: Duration,
    ) -> Result<(u32, Vec<u8>), WireError> {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(p) = self.packets.pop_front() {
                let Slip::Packet(p) = p else {
                    return Err(WireError::BadFrame(format!(
                        "damaged SLIP packet in reply to {what}"
                    )));
                };
                let Some(r) = parse_response(&p) else {
                    return Err(WireError::BadFrame(format!(
                        "malformed response to {what} ({} bytes)",
                        p.len()
                    )));
                };
                if r.op != op {
                    continue;
                }
                if r.body.len() != resp_len + 4 {
                    // A failing ROM may answer with status bytes only.
                    if r.body.len() == 4 && r.body[0] != 0 {
                        return Err(refused(what, r.body[1]));
                    }
                    return Err(WireError::BadFrame(format!(
                        "response to {what} has {} data bytes, expected {}",
                        r.body.len(),
                        resp_len + 4
                    )));
                }
                let status = &r.body[resp_len..];
                if status[0] != 0 {
                    return Err(refused(what, status[1]));
                }
                let mut body = r.body;
                body.truncate(resp_len);
                return Ok((r.value, body));
            }
            if Instant::now() >= deadline {
                return Err(WireError::Timeout {
                    what: what.to_string(),
                    secs: wait.as_secs_f64(),
                });
            }
            self.fill()?;
        }
    }

    /// Sends `req` until it is answered (see [`EspSession::command`]).
    pub fn request(&mut self, req: &Request) -> Result<(u32, Vec<u8>), WireError> {
        self.command(
            &req.what,
            req.op,
            &req.data,
            req.chk,
            req.resp_len,
            req.slow,
        )
    }

    /// One try at `reqs` pipelined: written back to back, as many at a time as the
    /// ROM's receive FIFO holds behind the command it works on ([`RX_FIFO`]; the ROM
    /// takes commands in order from its FIFO), then their replies read in order. Every
    /// request must be answered for any answer to count: a lost request shifts the
    /// replies after it (READ_REG replies do not name their register). On a failure
    /// the replies still on the way are dropped and the error returned; the caller
    /// goes one request at a time then ([`EspSession::pipeline_or_each`]).
    pub fn pipeline(&mut self, reqs: &[Request]) -> Result<Vec<(u32, Vec<u8>)>, WireError> {
        let pkts: Vec<Zeroizing<Vec<u8>>> = reqs
            .iter()
            .map(|r| Zeroizing::new(Command::encode(r.op, &r.data, r.chk)))
            .collect();
        let mut out = Vec::with_capacity(reqs.len());
        let mut sent = 0;
        while out.len() < reqs.len() {
            let oldest = out.len();
            // Bytes behind the command being answered: what the FIFO must hold.
            let mut ahead: usize = pkts[(oldest + 1).min(sent)..sent]
                .iter()
                .map(|p| p.len())
                .sum();
            let mut batch = Zeroizing::new(Vec::new());
            while sent < reqs.len() && (sent == oldest || ahead + pkts[sent].len() <= RX_FIFO) {
                if sent > oldest {
                    ahead += pkts[sent].len();
                }
                batch.extend_from_slice(&pkts[sent]);
                sent += 1;
            }
            if !batch.is_empty() {
                self.send_raw(&batch)?;
            }
            let r = &reqs[oldest];
            // The line time of every request and reply still on the way comes first.
            let flight: usize = (oldest..sent)
                .map(|i| pkts[i].len() + reqs[i].resp_len * 2 + 32)
                .sum();
            let wait = if r.slow { self.timeout } else { self.short };
            match self.receive(
                &r.what,
                r.op,
                r.resp_len,
                wait + self.byte_time * flight as u32,
            ) {
                Ok(v) => out.push(v),
                Err(e) => {
                    if retryable(&e) {
                        self.retries += 1;
                        self.drain(self.byte_time * flight as u32 + Duration::from_millis(30))?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// `reqs` pipelined, or one at a time (each with its resends) when the pipelined
    /// try fails on the line.
    pub fn pipeline_or_each(&mut self, reqs: &[Request]) -> Result<Vec<(u32, Vec<u8>)>, WireError> {
        match self.pipeline(reqs) {
            Err(e) if retryable(&e) => reqs.iter().map(|r| self.request(r)).collect(),
            r => r,
        }
    }

    /// Sends a command until it is answered, resending after a timeout, a damaged
    /// reply or a checksum/invalid-message refusal (what line noise causes).
    pub fn command(
        &mut self,
        what: &str,
        op: u8,
        data: &[u8],
        chk: u32,
        resp_len: usize,
        slow: bool,
    ) -> Result<(u32, Vec<u8>), WireError> {
        let wait = if slow { self.timeout } else { self.short };
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                self.retries += 1;
                self.drain(Duration::from_millis(30))?;
            }
            match self.exchange(what, op, data, chk, resp_len, wait) {
                // After a resend, the first try's reply may come too (its end was lost,
                // so the resend's reply completed it): it must not answer the next
                // request, whose op may be the same (READ_REG answers carry no address).
                Ok(r) if attempt > 0 => {
                    let reply = self.byte_time * (resp_len as u32 + 32);
                    self.drain(reply + Duration::from_millis(30))?;
                    return Ok(r);
                }
                Ok(r) => return Ok(r),
                Err(e) if retryable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Drops whatever is in flight (replies that answer nothing any more).
    pub fn resync(&mut self) -> Result<(), WireError> {
        self.retries += 1;
        self.drain(Duration::from_millis(100))
    }

    /// Synchronises with the ROM (autobaud). The ROM answers one SYNC with eight
    /// replies; the seven extra ones need no wait: `exchange` skips replies to another op.
    pub fn sync(&mut self) -> Result<(), WireError> {
        let mut last = None;
        for _ in 0..8 {
            match self.exchange("SYNC", SYNC, &SYNC_DATA, 0, 0, Duration::from_millis(150)) {
                Ok(_) => return Ok(()),
                Err(e) if retryable(&e) => {
                    self.retries += 1;
                    self.drain(Duration::from_millis(20))?;
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(WireError::Timeout { .. }) | None => WireError::Timeout {
                what: "SYNC (is the ESP32 in its ROM bootloader, download mode?)".into(),
                secs: 1.2,
            },
            Some(e) => e,
        })
    }

    pub fn read_reg(&mut self, addr: u32) -> Result<u32, WireError> {
        Ok(self.request(&Request::read_reg(addr))?.0)
    }

    pub fn spi_attach(&mut self) -> Result<(), WireError> {
        self.request(&Request::spi_attach())?;
        Ok(())
    }

    pub fn spi_set_params(&mut self, total: u32) -> Result<(), WireError> {
        self.request(&Request::spi_set_params(total))?;
        Ok(())
    }

    pub fn flash_begin(
        &mut self,
        erase_size: u32,
        blocks: u32,
        block: u32,
        offset: u32,
    ) -> Result<(), WireError> {
        self.request(&Request::flash_begin(erase_size, blocks, block, offset))?;
        Ok(())
    }

    pub fn flash_data(&mut self, seq: u32, block: &[u8]) -> Result<(), WireError> {
        self.request(&Request::flash_data(seq, block))?;
        Ok(())
    }

    /// The MD5 of `len` flash bytes at `addr`, as the chip computes it.
    pub fn flash_md5(&mut self, addr: u32, len: u32) -> Result<[u8; 16], WireError> {
        let req = Request::flash_md5(addr, len);
        for _ in 0..ATTEMPTS {
            let (_, hexd) = self.request(&req)?;
            // The digest comes as ASCII hex: a garbled digit shows, so it is asked again.
            if let Some(v) = md5_reply(&hexd) {
                return Ok(v);
            }
            self.retries += 1;
        }
        Err(WireError::BadFrame(
            "SPI_FLASH_MD5 replies are not 32 hex digits".into(),
        ))
    }
}

/// The digest in an SPI_FLASH_MD5 reply (32 ASCII hex digits); `None`: garbled.
pub fn md5_reply(hexd: &[u8]) -> Option<[u8; 16]> {
    let v = hex::decode(std::str::from_utf8(hexd).ok()?).ok()?;
    v.try_into().ok()
}

/// A command for [`EspSession::request`] or [`EspSession::pipeline`].
#[derive(Debug, Clone)]
pub struct Request {
    pub what: String,
    pub op: u8,
    /// Zeroised when dropped: FLASH_DATA blocks hold the private key.
    pub data: Zeroizing<Vec<u8>>,
    pub chk: u32,
    /// Data bytes in the reply (before the status bytes).
    pub resp_len: usize,
    /// The flash makes it slow (erase, MD5): the long timeout applies.
    pub slow: bool,
}

impl Request {
    fn new(what: String, op: u8, data: Vec<u8>) -> Request {
        Request {
            what,
            op,
            data: Zeroizing::new(data),
            chk: 0,
            resp_len: 0,
            slow: false,
        }
    }

    pub fn read_reg(addr: u32) -> Request {
        let what = format!("READ_REG 0x{addr:08x}");
        Request::new(what, READ_REG, addr.to_le_bytes().to_vec())
    }

    /// Attaches the default SPI flash (what esptool --no-stub sends first).
    pub fn spi_attach() -> Request {
        Request::new("SPI_ATTACH".into(), SPI_ATTACH, vec![0u8; 8])
    }

    /// Tells the ROM the flash geometry (`total` bytes, 64 KiB blocks, 4 KiB sectors).
    pub fn spi_set_params(total: u32) -> Request {
        let d = words(&[0, total, 0x1_0000, SECTOR as u32, 0x100, 0xFFFF]);
        Request::new("SPI_SET_PARAMS".into(), SPI_SET_PARAMS, d)
    }

    /// Erases `erase_size` bytes at `offset` and readies `blocks` FLASH_DATA blocks of
    /// `block` bytes each.
    pub fn flash_begin(erase_size: u32, blocks: u32, block: u32, offset: u32) -> Request {
        let d = words(&[erase_size, blocks, block, offset]);
        Request {
            slow: true,
            ..Request::new("FLASH_BEGIN".into(), FLASH_BEGIN, d)
        }
    }

    /// Writes block `seq` (the block size given to FLASH_BEGIN, the last one padded).
    pub fn flash_data(seq: u32, block: &[u8]) -> Request {
        let mut d = words(&[block.len() as u32, seq, 0, 0]);
        d.extend_from_slice(block);
        Request {
            chk: checksum(block),
            ..Request::new(format!("FLASH_DATA block {seq}"), FLASH_DATA, d)
        }
    }

    /// The chip's MD5 of `len` flash bytes at `addr` (32 hex digits in the reply).
    pub fn flash_md5(addr: u32, len: u32) -> Request {
        let d = words(&[addr, len, 0, 0]);
        Request {
            resp_len: 32,
            slow: true,
            ..Request::new("SPI_FLASH_MD5".into(), SPI_FLASH_MD5, d)
        }
    }
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn refused(what: &str, code: u8) -> WireError {
    WireError::Refused {
        what: what.to_string(),
        code: code as u32,
        name: rom_err::name(code).to_string(),
    }
}

/// Commands carry no checksum but FLASH_DATA's: a garbled address or length makes the
/// ROM refuse a request it would take, so a refusal is retried like a lost reply (every
/// command is idempotent; a real refusal just takes its attempts).
pub fn retryable(e: &WireError) -> bool {
    matches!(
        e,
        WireError::Timeout { .. } | WireError::BadFrame(_) | WireError::Refused { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_response_packets_round_trip() {
        let line = Command::encode(FLASH_DATA, &[1, 2, 0xC0, 0xDB], checksum(&[0xC0, 0xDB]));
        let mut d = SlipDecoder::new(MAX_PACKET);
        let mut out = Vec::new();
        d.push(&line, &mut out);
        let Slip::Packet(p) = &out[0] else { panic!() };
        let c = Command::parse(p).unwrap();
        assert_eq!(c.op, FLASH_DATA);
        assert_eq!(c.data, vec![1, 2, 0xC0, 0xDB]);
        assert_eq!(c.checksum, (0xEF ^ 0xC0 ^ 0xDB) as u32);
        // A length that disagrees with the packet is not a command.
        let mut bad = p.clone();
        bad[2] = 9;
        assert!(Command::parse(&bad).is_none());

        let r = encode_response(READ_REG, 0xF01D83, &[], None);
        out.clear();
        d.push(&r, &mut out);
        let Slip::Packet(p) = &out[0] else { panic!() };
        let r = parse_response(p).unwrap();
        assert_eq!(
            (r.op, r.value, r.body),
            (READ_REG, 0xF01D83, vec![0, 0, 0, 0])
        );
    }
}
