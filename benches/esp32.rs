//! ESP32 provisioning throughput over the simulated ROM bootloader (run: `cargo bench
//! --bench esp32`): the same two measurements as `benches/provision.rs`, for
//! `--device-profile esp32 --mode inject` (SYNC, chip and MAC, the esp_secure_cert
//! partition erased and written in 1 KiB FLASH_DATA blocks, the chip's flash MD5),
//! pipelined within the ROM's 128-byte receive FIFO, which the simulator enforces.
//!
//! 1. One ESP32 at 115200 and 921600: `link_seconds` against the wire limit (bytes sent
//!    and received × 10 bits ÷ baud). Target: ≥ 90 % of the line rate.
//! 2. 1, 4, 8, 16 ports at 115200: devices per second against one port. Target: 16
//!    ports ≥ 12× one port.

mod common;

use common::line_rate_and_ports;

fn main() {
    line_rate_and_ports(
        &["--profile", "esp32"],
        &["--device-profile", "esp32", "--mode", "inject"],
        // A MAC per run; the simulator counts the last byte up per port.
        &|n| format!("24:0a:c4:{:02x}:{:02x}:00", n >> 8, n & 0xff),
    );
}
