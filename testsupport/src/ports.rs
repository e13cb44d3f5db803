//! Free loopback TCP ports for components started by tests.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Ports this process already handed out. Tests in one binary run as threads, so two of them
/// could otherwise be given the same just-closed port and start two servers racing for it (one
/// then talks to the other's swtpm).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that was free when this returned and that this process has not
/// handed out before: binds port 0, reads the port the kernel picked and closes the socket again.
///
/// Another process can take the port before the caller binds it; callers that start a server on it
/// should retry with a new port when the server fails to bind.
///
/// # Panics
/// When no loopback socket can be bound at all (no network namespace loopback).
pub fn free_port() -> u16 {
    loop {
        let port = ephemeral_port();
        if reserve(&[port]) {
            return port;
        }
    }
}

/// Reserve `ports` for this process; false (nothing reserved) if any was handed out already.
pub(crate) fn reserve(ports: &[u16]) -> bool {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if ports.iter().any(|p| handed_out.contains(p)) {
        return false;
    }
    handed_out.extend(ports.iter().copied());
    true
}

fn ephemeral_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| {
        panic!("cannot bind a TCP socket on 127.0.0.1 to find a free port: {e}")
    });
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the local address of a bound socket: {e}"))
        .port()
}

/// True when `port` on 127.0.0.1 can be bound right now.
pub(crate) fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_nonzero_and_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(port_is_free(port), "port {port} should still be free");
    }

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let ports: BTreeSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
        let taken = *ports.iter().next().unwrap();
        assert!(!reserve(&[taken]));
    }
}
