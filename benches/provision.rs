//! Provisioning throughput over the simulator (run: `cargo bench --bench provision`).
//!
//! 1. One device at 115200 and 921600 simulated baud: time from opening the port to the
//!    device's LOCK acknowledgement (`link_seconds`), against the wire limit = bytes sent
//!    and received × 10 bits ÷ baud (the simulator paces both directions on one clock).
//!    Target: ≥ 90 % of the line rate.
//! 2. 1, 4, 8, 16 ports in parallel at 115200: devices per second, against one port.
//!    Target: 16 ports ≥ 12× one port.
//!
//! The reference in each ratio is measured in the same run.

mod common;

use common::line_rate_and_ports;

fn main() {
    line_rate_and_ports(&[], &[], &|n| format!("B{n}"));
}
