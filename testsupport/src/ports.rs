//! Free loopback TCP ports for components started by tests.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free when this returned: binds port 0, reads the port the
/// kernel picked and closes the socket again.
///
/// Another process can take the port before the caller binds it; callers that start a server on it
/// should retry with a new port when the server fails to bind.
///
/// # Panics
/// When no loopback socket can be bound at all (no network namespace loopback).
pub fn free_port() -> u16 {
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
}
