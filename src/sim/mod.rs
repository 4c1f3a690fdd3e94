//! The device simulator behind `cradle sim`: devices on pseudo-terminals that speak the
//! cradle protocol (or the nRF91 AT profile), keep their state in a file, pace their
//! bytes to a simulated baud rate and inject faults on request.

pub mod device;
pub mod esp32;
pub mod faults;
pub mod micropython;
pub mod nrf91;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use device::{Device, DeviceState, Reply};
pub use faults::{Faults, Rng, FAULT_HELP};

use crate::error::{Error, Result};
use crate::wire::{Line, LineBuffer};

pub use crate::device::DeviceProfile;

/// A device behind a line: takes received bytes, returns replies.
pub trait Responder: Send {
    /// Feeds received bytes; returns each reply with the number of received bytes its
    /// request took (the pacing charge).
    fn feed(&mut self, data: &[u8]) -> Vec<(usize, Reply)>;
    fn device(&mut self) -> &mut Device;
    /// The receive FIFO of a device that stops reading its line while it works on a
    /// request (the ESP32 ROM): at most this many bytes may arrive from the end of a
    /// request until its reply is out; more are lost, as on the chip. `None`: the
    /// device takes everything (a firmware with a buffer the size of its packets).
    fn rx_fifo(&self) -> Option<usize> {
        None
    }
}

/// The cradle protocol on top of a `Device`.
pub struct CradleResponder {
    pub dev: Device,
    lines: LineBuffer,
}

impl CradleResponder {
    pub fn new(dev: Device) -> CradleResponder {
        CradleResponder {
            dev,
            lines: LineBuffer::new(device::SIM_MAX_LINE),
        }
    }
}

impl Responder for CradleResponder {
    fn feed(&mut self, data: &[u8]) -> Vec<(usize, Reply)> {
        let mut lines = Vec::new();
        self.lines.push(data, &mut lines);
        let window_drop = self.dev.faults.window_drop;
        lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| match l {
                // Requests read together found the ones before them still waiting: a
                // device with a window-sized buffer has no room for the one beyond it.
                Line::Complete(l) if window_drop && i >= self.dev.window => {
                    (l.len() + 1, Reply::default())
                }
                Line::Complete(l) => (l.len() + 1, self.dev.handle_line(&l)),
                Line::TooLong => (
                    device::SIM_MAX_LINE,
                    Reply {
                        bytes: device::err(0, crate::wire::code::LINE_TOO_LONG).encode(),
                        ..Default::default()
                    },
                ),
            })
            .collect()
    }
    fn device(&mut self) -> &mut Device {
        &mut self.dev
    }
}

/// Paces bytes to a baud rate: every byte, in either direction, costs 10 bit times
/// (8N1), on one shared clock (the accounting the benchmark's wire limit uses).
///
/// Like a UART with a FIFO: bytes that were available at `ready` go out back-to-back
/// after whatever is already on the line, even if this process wakes up a little late;
/// when the line was idle (nothing available), the clock restarts at `ready`. So idle
/// time is never hidden and the line rate is never exceeded.
pub struct Pacer {
    byte_time: Duration,
    next: Instant,
}

impl Pacer {
    pub fn new(baud: u32) -> Pacer {
        Pacer {
            byte_time: Duration::from_secs_f64(10.0 / baud.max(1) as f64),
            next: Instant::now(),
        }
    }
    /// Charges `bytes` that became available at `ready`; sleeps until they are through.
    pub fn charge_from(&mut self, ready: Instant, bytes: usize) {
        self.next = self.next.max(ready) + self.byte_time * bytes as u32;
        let wait = self.next.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    pub fn charge(&mut self, bytes: usize) {
        self.charge_from(Instant::now(), bytes)
    }
}

/// A pseudo-terminal pair; the simulator keeps the slave open too, so a host closing
/// and reopening the port never hangs the line up.
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
    pub path: PathBuf,
}

pub fn open_pty() -> Result<Pty> {
    let mut m: libc::c_int = -1;
    let mut s: libc::c_int = -1;
    // SAFETY: openpty writes two fds; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Device(format!(
            "cannot open a pseudo-terminal: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: both fds were just returned by openpty and are owned here.
    let master = unsafe { File::from_raw_fd(m) };
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: buffer and length are valid; termios is plain data.
    unsafe {
        if libc::ttyname_r(s, name.as_mut_ptr(), name.len()) != 0 {
            return Err(Error::Device("cannot name the pseudo-terminal".into()));
        }
        // Raw mode: no echo, no line editing, 8-bit clean (a UART, not a terminal).
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(s, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(s, libc::TCSANOW, &t);
        }
        for fd in [m, s] {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        let fl = libc::fcntl(m, libc::F_GETFL);
        libc::fcntl(m, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // SAFETY: ttyname_r NUL-terminates on success.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok(Pty {
        master,
        slave,
        path: PathBuf::from(path),
    })
}

fn poll_fd(fd: i32, events: i16, ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc > 0 {
        p.revents
    } else {
        0
    }
}

/// Writes all of `data` to the master within a few seconds; if the host stopped reading
/// (port closed), the queued input is flushed so the device never wedges.
fn write_all_master(pty: &mut Pty, data: &[u8]) -> bool {
    let mut last_progress = Instant::now();
    let mut off = 0;
    while off < data.len() {
        match pty.master.write(&data[off..]) {
            Ok(n) => {
                off += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nobody has read for a while (host gone): drop the rest and what is queued.
                if last_progress.elapsed() > Duration::from_millis(300) {
                    // SAFETY: valid fd.
                    unsafe { libc::tcflush(pty.slave.as_raw_fd(), libc::TCIFLUSH) };
                    return false;
                }
                poll_fd(pty.master.as_raw_fd(), libc::POLLOUT, 20);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

pub enum Outcome {
    Stop,
    Hangup,
}

/// Serves one pty until stop or a hang-up fault.
pub fn serve(pty: &mut Pty, r: &mut dyn Responder, baud: u32, stop: &AtomicBool) -> Outcome {
    // A UART sends its next byte on time: the pacer's sleeps should not overshoot by
    // the kernel's default 50 µs timer slack (a byte is 11 µs at 921600 baud).
    // SAFETY: prctl with an integer argument, for this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let baud = r.device().faults.slow_baud.unwrap_or(baud);
    let mut pacer = Pacer::new(baud);
    if r.device().faults.garbage_on_boot {
        let mut noise = Vec::with_capacity(96);
        let rng = &mut r.device().rng;
        for _ in 0..96 {
            let b = (rng.next_u64() % 256) as u8;
            noise.push(if b == b'\n' || b == b'$' { b'#' } else { b });
        }
        noise.extend_from_slice(b"\r\nboot: simulated rom, garbage above\r\n");
        pacer.charge(noise.len());
        write_all_master(pty, &noise);
    }
    let mut buf = [0u8; 4096];
    // Bytes of a request not yet answered, across reads (a request the host's write
    // split): the FIFO path charges all of them with the reply.
    let mut fed = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Outcome::Stop;
        }
        if poll_fd(pty.master.as_raw_fd(), libc::POLLIN, 50) == 0 {
            continue;
        }
        let window_drop = r.device().faults.window_drop;
        if window_drop {
            // A slow reader: what the host sent meanwhile is taken (and judged) together.
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen = Instant::now();
        let input = read_available(pty, &mut buf, window_drop);
        if input.is_empty() {
            continue;
        }
        let data = {
            let dev = r.device();
            faults::mangle(&input, &dev.faults.clone(), &mut dev.rng)
        };
        if let Some(cap) = r.rx_fifo() {
            if let Some(o) = serve_fifo(pty, r, &mut pacer, seen, data, cap, &mut fed) {
                return o;
            }
            continue;
        }
        for (cost, reply) in r.feed(&data) {
            if let Some(d) = reply.stall {
                std::thread::sleep(d);
            }
            if reply.hangup {
                pacer.charge_from(seen, cost);
                return Outcome::Hangup;
            }
            let out = {
                let dev = r.device();
                faults::mangle(&reply.bytes, &dev.faults.clone(), &mut dev.rng)
            };
            // One wait per request (its bytes in, the reply out) for a normal reply; a huge
            // reply goes in pieces so the host sees it arrive at the line rate.
            let mut pieces = out.chunks(1024);
            let first = pieces.next().unwrap_or(&[]);
            pacer.charge_from(seen, cost + first.len());
            if !write_all_master(pty, first) {
                continue;
            }
            for piece in pieces {
                pacer.charge_from(seen, piece.len());
                if !write_all_master(pty, piece) {
                    break;
                }
            }
        }
    }
}

/// What the host has written so far (nothing: an empty vector). A slow reader
/// (`window_drop`) takes everything that is queued.
fn read_available(pty: &mut Pty, buf: &mut [u8], window_drop: bool) -> Vec<u8> {
    let mut input = Vec::new();
    loop {
        match pty.master.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                if !window_drop || n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
        }
    }
    input
}

/// Serves `data` to a device with a `cap`-byte receive FIFO, request by request. From
/// the end of a request until its reply is out the device does not read its line: the
/// bytes that came after the request (those already read and those the host wrote
/// meanwhile, i.e. without waiting for the reply) queue in the FIFO, and whatever does
/// not fit is lost, as on the chip. A host that pipelines within the FIFO loses
/// nothing; one that sends more ahead fails. `cost`: bytes fed since the last reply
/// (the pacing charge of the next one). `Some`: a hang-up fault.
fn serve_fifo(
    pty: &mut Pty,
    r: &mut dyn Responder,
    pacer: &mut Pacer,
    seen: Instant,
    data: Vec<u8>,
    cap: usize,
    cost: &mut usize,
) -> Option<Outcome> {
    let mut buf = [0u8; 4096];
    let mut backlog = data;
    let mut i = 0;
    while i < backlog.len() {
        let replies = r.feed(&backlog[i..i + 1]);
        i += 1;
        *cost += 1;
        for (_, reply) in replies {
            if let Some(d) = reply.stall {
                std::thread::sleep(d);
            }
            if reply.hangup {
                pacer.charge_from(seen, std::mem::take(cost));
                return Some(Outcome::Hangup);
            }
            let out = {
                let dev = r.device();
                faults::mangle(&reply.bytes, &dev.faults.clone(), &mut dev.rng)
            };
            let mut pieces = out.chunks(1024);
            let first = pieces.next().unwrap_or(&[]);
            pacer.charge_from(seen, std::mem::take(cost) + first.len());
            // The device was busy until now: what the host sent meanwhile joins the queue.
            let late = read_available(pty, &mut buf, false);
            if !late.is_empty() {
                let dev = r.device();
                backlog.extend(faults::mangle(&late, &dev.faults.clone(), &mut dev.rng));
            }
            let queued = backlog.len() - i;
            if queued > cap {
                // Lost bytes took their time on the line all the same.
                pacer.charge(queued - cap);
                backlog.truncate(i + cap);
            }
            if !write_all_master(pty, first) {
                continue;
            }
            for piece in pieces {
                pacer.charge_from(seen, piece.len());
                if !write_all_master(pty, piece) {
                    break;
                }
            }
        }
    }
    None
}

/// What `cradle sim` was asked to run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub count: usize,
    pub link: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub hardware_id: Option<String>,
    pub model: String,
    pub baud: u32,
    pub faults: Faults,
    pub profile: DeviceProfile,
    /// nrf91: write the modems' identity keys (`--nrf-identity-keys` format) here.
    pub identity_keys_out: Option<PathBuf>,
    /// Refuse what cradle-protocol(7) forbids even where a lenient device would cope.
    pub strict: bool,
    /// The window each device advertises in HELLO.
    pub window: usize,
    /// The firmware version the devices report (HELLO `fw=`, nRF91 `AT+CGMR`), also over
    /// a loaded state: a firmware update between two runs.
    pub firmware: Option<String>,
}

/// A device that came up (or came back after a hang-up) on a pty.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ready {
    pub index: usize,
    pub path: PathBuf,
    pub link: Option<PathBuf>,
    pub hardware_id: String,
}

/// The symlink for device `i`: PATH for one device, PATH0..PATHn-1 for several.
pub fn link_for(link: &Path, count: usize, i: usize) -> PathBuf {
    if count == 1 {
        link.to_path_buf()
    } else {
        let mut s = link.as_os_str().to_owned();
        s.push(i.to_string());
        PathBuf::from(s)
    }
}

fn state_file(cfg: &SimConfig, i: usize) -> Result<Option<PathBuf>> {
    let Some(p) = &cfg.state else { return Ok(None) };
    if cfg.count == 1 && !p.is_dir() {
        return Ok(Some(p.clone()));
    }
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    Ok(Some(p.join(format!("device-{i}.json"))))
}

fn default_hwid(cfg: &SimConfig, i: usize, base: &str) -> String {
    if cfg.count == 1 {
        base.to_string()
    } else {
        format!("{base}-{i:02}")
    }
}

fn replace_link(target: &Path, link: &Path) -> Result<()> {
    if let Some(dir) = link.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(link).map_err(|e| Error::io(link, e))?
        }
        Ok(_) => {
            return Err(Error::conflict(format!(
                "{} exists and is not a symlink; not replacing it",
                link.display()
            )))
        }
        Err(_) => {}
    }
    // Atomic swap via a temporary link, so a watching host never sees a gap it misreads.
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| Error::io(link, e))
}

/// Removes `link` if it is still a symlink to `target` (another simulator may have
/// taken the name since).
fn unlink_if_to(link: &Path, target: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
    }
}

/// Removes the symlinks this simulator made (only if they are still symlinks).
pub fn remove_links(cfg: &SimConfig) {
    if let Some(link) = &cfg.link {
        for i in 0..cfg.count {
            let l = link_for(link, cfg.count, i);
            if std::fs::symlink_metadata(&l)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(&l);
            }
        }
    }
}

/// Builds the devices (loading or creating their state) without starting them.
pub fn build_devices(cfg: &SimConfig) -> Result<Vec<Box<dyn Responder>>> {
    let base = cfg.hardware_id.clone().unwrap_or_else(|| {
        let mut r = Rng::new();
        format!("SIM-{:08X}", r.next_u64() as u32)
    });
    crate::wire::check_token("hardware id", &base).map_err(|e| Error::input(e.to_string()))?;
    crate::wire::check_token("model", &cfg.model).map_err(|e| Error::input(e.to_string()))?;
    if let Some(fw) = &cfg.firmware {
        if cfg.profile == DeviceProfile::Esp32 || cfg.profile == DeviceProfile::Micropython {
            return Err(Error::usage(format!(
                "--firmware applies to the cradle and nrf91 profiles (the {} simulator reports its own)",
                cfg.profile
            )));
        }
        crate::wire::check_token("firmware", fw).map_err(|e| Error::input(e.to_string()))?;
    }
    let mut out: Vec<Box<dyn Responder>> = Vec::with_capacity(cfg.count);
    for i in 0..cfg.count {
        let path = state_file(cfg, i)?;
        let state = match &path {
            Some(p) => DeviceState::load(p)?,
            None => None,
        };
        let state = match state {
            Some(s) => s,
            None => {
                let hwid = match cfg.profile {
                    DeviceProfile::Nrf91 if cfg.hardware_id.is_none() => nrf91::fake_imei(i),
                    DeviceProfile::Esp32 => esp32::sim_mac(cfg, i)?,
                    DeviceProfile::Micropython => match &cfg.hardware_id {
                        None => micropython::fake_unique_id(i),
                        Some(h) => {
                            micropython::unique_id_for(h, cfg.count, i).map_err(Error::input)?
                        }
                    },
                    _ => default_hwid(cfg, i, &base),
                };
                let mut s = DeviceState::new(&hwid, &cfg.model);
                if cfg.profile == DeviceProfile::Nrf91 {
                    s.firmware = nrf91::SIM_MFW.to_string();
                }
                if cfg.profile == DeviceProfile::Esp32 {
                    s.model = esp32::SIM_MODEL.to_string();
                }
                if cfg.profile == DeviceProfile::Micropython {
                    s.firmware = format!("MicroPython {}", micropython::SIM_RELEASE);
                }
                if let Some(p) = &path {
                    s.save(p)?;
                }
                s
            }
        };
        let mut state = state;
        if let Some(fw) = &cfg.firmware {
            state.firmware = fw.clone();
        }
        let mut dev = Device::new(state, path, cfg.faults.clone());
        dev.strict = cfg.strict;
        dev.window = cfg.window;
        out.push(match cfg.profile {
            DeviceProfile::Cradle => Box::new(CradleResponder::new(dev)),
            DeviceProfile::Nrf91 => Box::new(nrf91::NrfResponder::new(dev)),
            DeviceProfile::Esp32 => Box::new(esp32::Esp32Responder::new(dev)),
            DeviceProfile::Micropython => Box::new(micropython::MicropythonResponder::new(dev)),
        });
    }
    Ok(out)
}

/// Runs the devices until `stop` is set. Each device (re)appearing on a pty is sent to
/// `ready`. A hang-up fault closes the pty and brings the device back on a new one
/// behind the same link, as a USB adapter re-enumerating would.
pub fn run(cfg: &SimConfig, stop: &'static AtomicBool, ready: mpsc::Sender<Ready>) -> Result<()> {
    let mut devices = build_devices(cfg)?;
    if let (Some(out), DeviceProfile::Nrf91) = (&cfg.identity_keys_out, cfg.profile) {
        let text: String = devices
            .iter_mut()
            .map(|d| nrf91::identity_entry(&d.device().state.hardware_id))
            .collect();
        crate::outfile::write_file_atomic(out, text.as_bytes(), 0o644, true)?;
    }
    // Bring every pty up before serving, so setup errors surface at once.
    let mut first = Vec::new();
    for (i, mut d) in devices.into_iter().enumerate() {
        let pty = open_pty()?;
        let link = cfg.link.as_ref().map(|l| link_for(l, cfg.count, i));
        if let Some(l) = &link {
            replace_link(&pty.path, l)?;
        }
        let hwid = d.device().state.hardware_id.clone();
        first.push((i, d, pty, link, hwid));
    }
    std::thread::scope(|s| {
        for (i, mut d, pty, link, hardware_id) in first {
            let ready = ready.clone();
            let baud = cfg.baud;
            s.spawn(move || {
                let mut pty = pty;
                loop {
                    let _ = ready.send(Ready {
                        index: i,
                        path: pty.path.clone(),
                        link: link.clone(),
                        hardware_id: hardware_id.clone(),
                    });
                    match serve(&mut pty, d.as_mut(), baud, stop) {
                        Outcome::Stop => return,
                        Outcome::Hangup => {
                            // Unplugged: the device node goes away with the device, as
                            // a USB serial port's does. A link left pointing at the freed
                            // /dev/pts/N would lead a host (a retry, --watch) into
                            // whichever pseudo-terminal is given that number next.
                            if let Some(l) = &link {
                                unlink_if_to(l, &pty.path);
                            }
                            drop(pty);
                            let away = d
                                .device()
                                .faults
                                .stay_away
                                .unwrap_or(Duration::from_millis(150));
                            // Away, but still stoppable (SIGTERM while unplugged).
                            let back = Instant::now() + away;
                            while Instant::now() < back {
                                if stop.load(Ordering::Relaxed) {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            pty = match open_pty() {
                                Ok(p) => p,
                                Err(e) => {
                                    eprintln!("cradle sim: device {i}: {e}");
                                    return;
                                }
                            };
                            if let Some(l) = &link {
                                if let Err(e) = replace_link(&pty.path, l) {
                                    eprintln!("cradle sim: device {i}: {e}");
                                }
                            }
                        }
                    }
                }
            });
        }
        drop(ready);
    });
    Ok(())
}
