//! Fault injection for the simulator: `--fault SPEC`, repeatable.

use std::time::Duration;

use crate::error::{Error, Result};

/// The documented `--fault` specs (a literal, so `cradle sim --help` can `concat!` it).
#[macro_export]
macro_rules! fault_help {
    () => {
        "\
Faults (--fault SPEC, repeatable):
  drop:P                 drop each byte (both directions) with probability P (0..1)
  corrupt:P              flip one bit of each byte with probability P (0..1)
  stall:MS               stop answering for MS milliseconds before replying to the first WRITE
  disconnect-after:STEP[:N]
                         hang up (the port disappears, --link with it, and comes back as a
                         new pty behind the same --link) after handling the N-th (default 1st) STEP request, before
                         replying; STEP is hello, keygen, stat, write, commit, read, lock, wipe,
                         erase, nextkey, switch (nrf91: keygen, cmng-write, cmng-list; esp32: sync,
                         flash-begin, flash-data, md5, read-flash; micropython: hello is
                         entering the raw REPL, write a file write, so the file is left half
                         written as by a board that resets mid-write)
  stay-away:MS           after a disconnect-after hang-up, come back only MS milliseconds later
                         (a pulled cable: the host gives up first, a later run finds the device)
  slow-baud:RATE         pace the line at RATE while the host expects --baud
  reject-lock[:N]        refuse the first N (default 1) LOCK requests (error 13 lock-refused)
  garbage-on-boot        send random noise (no frame) each time the port comes up
  forge-attestation      sign wipe attestations with a random key instead of the identity key
  replay-nonce           answer WIPE with the nonce of the previous wipe (or a random one)
  long-line              answer the first HELLO (nrf91: AT+CGSN) with 1 MiB without a line end
                         (micropython: the first program prints 1 MiB and never ends;
                         esp32: the first SYNC with 1 MiB in one unterminated SLIP packet)
  bad-base64             answer the first KEYGEN with a CSR that is not base64
  csr-wrong-key          answer the first KEYGEN with a CSR for another key than the one reported
                         (nrf91: a COSE signed by another key than the modem's identity key)
  bad-digest             nrf91: answer the first AT%KEYGEN with a COSE digest that is not the
                         SHA-256 of the CSR
  wrong-sec-tag          nrf91: answer the first AT%KEYGEN with a COSE for another sec_tag
  hash-mismatch          return altered data for the first READ (nrf91: a wrong SHA-256 in
                         the first AT%CMNG=1 listing; micropython: a wrong first SHA-256
                         digest; esp32: one bit of the first FLASH_DATA block does not
                         take), so the read-back check fails
  window-drop            read the line every 20 ms and silently drop each request that finds
                         the advertised window (--window) of requests already waiting (a
                         device with a window-sized receive buffer)
  upper-crc              write the CRC of every reply in upper-case hex (the page forbids it)
  bad-attestation        sign and send wipe attestations without their final LF (the
                         device still wipes; the page's exact bytes end with LF)
  traceback              micropython: answer the first file write with a Traceback
                         (OSError: [Errno 28] ENOSPC)
  no-raw-paste           micropython: a board without raw-paste mode (answers R\x00), so
                         programs go in plain raw mode (256-byte chunks)
  stuck-bit              esp32: bit 0 of flash byte 0xD000 is stuck at 0 (a bad cell under
                         the partition's first byte): every write and erase reads back wrong
One-shot faults fire once per simulator process, so a re-run of the host completes."
    };
}

pub const FAULT_HELP: &str = fault_help!();

#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub drop: f64,
    pub corrupt: f64,
    pub stall: Option<Duration>,
    pub disconnect_after: Option<(String, u32)>,
    /// How long a hung-up device stays away before its new pty appears.
    pub stay_away: Option<Duration>,
    pub slow_baud: Option<u32>,
    pub reject_lock: u32,
    pub garbage_on_boot: bool,
    pub forge_attestation: bool,
    pub replay_nonce: bool,
    pub long_line: bool,
    pub bad_base64: bool,
    pub csr_wrong_key: bool,
    pub keygen_bad_digest: bool,
    pub keygen_wrong_sec_tag: bool,
    pub hash_mismatch: bool,
    pub window_drop: bool,
    pub upper_crc: bool,
    pub bad_attestation: bool,
    pub traceback: bool,
    pub no_raw_paste: bool,
    pub stuck_bit: bool,
}

fn prob(spec: &str, v: Option<&str>) -> Result<f64> {
    v.and_then(|v| v.parse::<f64>().ok())
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| {
            Error::input(format!(
                "--fault {spec}: want a probability 0..1, e.g. {}:0.001",
                spec.split(':').next().unwrap_or("")
            ))
        })
}

const STEPS: &[&str] = &[
    "hello",
    "keygen",
    "nextkey",
    "switch",
    "stat",
    "write",
    "commit",
    "read",
    "lock",
    "wipe",
    "erase",
    "cmng-write",
    "cmng-list",
    "sync",
    "flash-begin",
    "flash-data",
    "md5",
    "read-flash",
];

impl Faults {
    pub fn parse(specs: &[String]) -> Result<Faults> {
        let mut f = Faults::default();
        for spec in specs {
            let mut parts = spec.splitn(2, ':');
            let name = parts.next().unwrap_or("");
            let val = parts.next();
            let no_value = |f: &mut bool| -> Result<()> {
                if val.is_some() {
                    return Err(Error::input(format!(
                        "--fault {spec}: '{name}' takes no value"
                    )));
                }
                *f = true;
                Ok(())
            };
            match name {
                "drop" => f.drop = prob(spec, val)?,
                "corrupt" => f.corrupt = prob(spec, val)?,
                "stall" => {
                    let ms = val.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                        Error::input(format!(
                            "--fault {spec}: want milliseconds, e.g. stall:3000"
                        ))
                    })?;
                    f.stall = Some(Duration::from_millis(ms));
                }
                "stay-away" => {
                    let ms = val.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                        Error::input(format!(
                            "--fault {spec}: want milliseconds, e.g. stay-away:8000"
                        ))
                    })?;
                    f.stay_away = Some(Duration::from_millis(ms));
                }
                "disconnect-after" => {
                    let v = val.unwrap_or("");
                    let mut p = v.splitn(2, ':');
                    let step = p.next().unwrap_or("").to_ascii_lowercase();
                    if !STEPS.contains(&step.as_str()) {
                        return Err(Error::input(format!(
                            "--fault {spec}: step must be one of {}",
                            STEPS.join(", ")
                        )));
                    }
                    let n = match p.next() {
                        Some(n) => n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            Error::input(format!("--fault {spec}: N must be a positive number"))
                        })?,
                        None => 1,
                    };
                    f.disconnect_after = Some((step, n));
                }
                "slow-baud" => {
                    f.slow_baud = Some(
                        val.and_then(|v| v.parse::<u32>().ok())
                            .filter(|b| *b >= 50)
                            .ok_or_else(|| {
                                Error::input(format!(
                                    "--fault {spec}: want a baud rate, e.g. slow-baud:9600"
                                ))
                            })?,
                    )
                }
                "reject-lock" => {
                    f.reject_lock = match val {
                        Some(n) => n.parse().map_err(|_| {
                            Error::input(format!("--fault {spec}: N must be a number"))
                        })?,
                        None => 1,
                    }
                }
                "garbage-on-boot" => no_value(&mut f.garbage_on_boot)?,
                "forge-attestation" => no_value(&mut f.forge_attestation)?,
                "replay-nonce" => no_value(&mut f.replay_nonce)?,
                "long-line" => no_value(&mut f.long_line)?,
                "bad-base64" => no_value(&mut f.bad_base64)?,
                "csr-wrong-key" => no_value(&mut f.csr_wrong_key)?,
                "bad-digest" => no_value(&mut f.keygen_bad_digest)?,
                "wrong-sec-tag" => no_value(&mut f.keygen_wrong_sec_tag)?,
                "hash-mismatch" => no_value(&mut f.hash_mismatch)?,
                "window-drop" => no_value(&mut f.window_drop)?,
                "upper-crc" => no_value(&mut f.upper_crc)?,
                "bad-attestation" => no_value(&mut f.bad_attestation)?,
                "traceback" => no_value(&mut f.traceback)?,
                "no-raw-paste" => no_value(&mut f.no_raw_paste)?,
                "stuck-bit" => no_value(&mut f.stuck_bit)?,
                _ => {
                    return Err(Error::input(format!(
                        "--fault '{spec}': unknown fault (see `cradle sim --help`)"
                    )))
                }
            }
        }
        Ok(f)
    }
}

/// A small fast PRNG for byte-level faults (xorshift64*); seeded from the OS.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        use rand_core::RngCore;
        Rng(rand_core::OsRng.next_u64() | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Applies drop/corrupt faults to bytes on the line.
pub fn mangle(data: &[u8], f: &Faults, rng: &mut Rng) -> Vec<u8> {
    if f.drop == 0.0 && f.corrupt == 0.0 {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        if rng.chance(f.drop) {
            continue;
        }
        if rng.chance(f.corrupt) {
            out.push(b ^ (1 << (rng.next_u64() % 7)));
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_rejects_bad_ones() {
        let f = Faults::parse(&[
            "corrupt:0.01".into(),
            "disconnect-after:write:3".into(),
            "reject-lock".into(),
            "stay-away:8000".into(),
        ])
        .unwrap();
        assert_eq!(f.corrupt, 0.01);
        assert_eq!(f.stay_away, Some(Duration::from_millis(8000)));
        assert_eq!(f.disconnect_after, Some(("write".into(), 3)));
        assert_eq!(f.reject_lock, 1);
        let f = Faults::parse(&["disconnect-after:switch".into()]).unwrap();
        assert_eq!(f.disconnect_after, Some(("switch".into(), 1)));
        for bad in [
            "corrupt:2",
            "drop",
            "disconnect-after:fly",
            "nonsense",
            "long-line:1",
            "stay-away",
            "stay-away:soon",
        ] {
            assert!(Faults::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
