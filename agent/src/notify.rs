//! systemd's notify protocol (`sd_notify(3)`), spoken directly: one datagram of `KEY=value`
//! lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). The agent sends `READY=1` once it is prepared, `STATUS=` with its phase,
//! `STOPPING=1`, and `WATCHDOG=1` every half `$WATCHDOG_USEC` while its main loop keeps its
//! promise ([`Liveness`]).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::liveness::Liveness;

/// Where notifications go; a disabled notifier (no `$NOTIFY_SOCKET`) sends nothing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket systemd gave in `$NOTIFY_SOCKET`; disabled when it is unset (not under
    /// systemd, or `Type=` is not `notify`) or unusable (logged).
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::disabled();
        };
        match Notifier::at(&name.to_string_lossy()) {
            Ok(notifier) => notifier,
            Err(e) => {
                warn!(socket = %name.to_string_lossy(), error = %e, "NOTIFY_SOCKET is unusable; systemd will not hear from the agent");
                Notifier::disabled()
            }
        }
    }

    /// A notifier that sends nothing (in-process agents, tests).
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Notifications to the socket `name`: a path, or `@name` for the abstract namespace.
    pub fn at(name: &str) -> io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => SocketAddr::from_pathname(name)?,
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` lines) as one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Sends `state`; a failure is logged, never fatal (systemd then acts on its timeouts).
    fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            warn!(error = %e, state, "cannot notify systemd");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=`: what the agent is doing, shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// A status text on one line (a newline would start another `KEY=value`).
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The watchdog period systemd asks for (`$WATCHDOG_USEC`, for this process when
/// `$WATCHDOG_PID` is set); `None` without `WatchdogSec=`.
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half `period` while `liveness` holds; when the main loop is past its
/// promise the pings stop (logged once), so systemd's watchdog restarts the agent. Runs until
/// dropped.
pub async fn feed_watchdog(
    notifier: std::sync::Arc<Notifier>,
    liveness: Liveness,
    period: Duration,
) {
    let mut ticker = tokio::time::interval(period / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut starving = false;
    loop {
        ticker.tick().await;
        match liveness.overdue() {
            None => {
                if starving {
                    info!("the main loop is making progress again; feeding the watchdog");
                    starving = false;
                }
                notifier.watchdog();
            }
            Some(overdue) if !starving => {
                error!(
                    ?overdue,
                    ?period,
                    "the main loop is stuck past its step's deadline; no longer feeding systemd's watchdog, which restarts the agent"
                );
                starving = true;
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn received(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn ready_and_status_reach_the_socket_systemd_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::at(path.to_str().unwrap()).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready("prepared\nnext");
        notifier.status("connected to central");
        notifier.stopping();
        assert_eq!(
            received(&systemd),
            [
                "READY=1\nSTATUS=prepared next",
                "STATUS=connected to central",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
    }

    #[test]
    fn an_abstract_socket_name_starts_with_an_at_sign() {
        let name = format!("cairn-notify-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::at(&format!("@{name}"))
            .unwrap()
            .notify("READY=1")
            .unwrap();
        assert_eq!(received(&systemd), ["READY=1"]);
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_does_not_fail() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.notify("READY=1").unwrap();
    }

    #[tokio::test]
    async fn the_watchdog_is_fed_only_while_the_loop_keeps_its_promise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Arc::new(Notifier::at(path.to_str().unwrap()).unwrap());
        let liveness = Liveness::new();
        let feeder = tokio::spawn(feed_watchdog(
            notifier,
            liveness.clone(),
            Duration::from_millis(40),
        ));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let fed = received(&systemd);
        assert!(fed.len() >= 3, "{fed:?}");
        assert!(fed.iter().all(|m| m == "WATCHDOG=1"), "{fed:?}");
        // A hung loop: its promise runs out and the pings stop.
        liveness.expect_within(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = received(&systemd);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(received(&systemd), Vec::<String>::new());
        // It moves again: the pings come back.
        liveness.step();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!received(&systemd).is_empty());
        feeder.abort();
    }
}
