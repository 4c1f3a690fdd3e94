//! A simulated device (the simulator's own protocol logic, in process) on one end of
//! an in-memory pipe, so that links and the provisioning flow run without a pty.

use std::io::{Read, Write};
use std::thread::JoinHandle;

use crate::sim::Responder;
use crate::wire::pipe::{self, End};

/// Serves `r` on a new pipe; returns the host end and the device thread, which hands
/// the device back (its state, for a re-run) when the host hangs up or the device does.
pub(crate) fn serve(mut r: Box<dyn Responder>) -> (End, JoinHandle<Box<dyn Responder>>) {
    let (host, mut dev) = pipe::pair();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match dev.read(&mut buf) {
                Ok(0) => return r,
                Ok(n) => {
                    for (_, reply) in r.feed(&buf[..n]) {
                        // A hang-up fault: the line goes dead before the reply.
                        if reply.hangup {
                            return r;
                        }
                        if dev.write_all(&reply.bytes).is_err() {
                            return r;
                        }
                    }
                }
                Err(_) => {}
            }
        }
    });
    (host, h)
}
