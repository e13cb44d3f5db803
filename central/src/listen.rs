//! What both listeners do with a connection before HTTP sees it: a cap on the connections one
//! source address holds open, and deadlines on its bytes (see [`Watched`]). Together with the
//! TLS handshake deadline they bound what a slow or idle client costs: a slowloris that trickles
//! a request in, a client that connects and sends nothing, and a flood of connections from one
//! address are cut off without touching anyone else's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A TLS handshake that has not finished by then is dropped (slow or garbage clients).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After the handshake a client has this long to send [`FIRST_BYTES`] bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 preface (24 bytes) and one frame header (9), or the start of an HTTP/1 request
/// line: every real client sends this much at once; a slowloris trickling bytes does not.
pub const FIRST_BYTES: u64 = 33;

/// Open connections per source address, up to a cap.
#[derive(Debug)]
pub struct SourceCap {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceCap {
    /// A cap of `max` connections per address; 0 = no cap.
    pub fn new(max: u32) -> Arc<SourceCap> {
        Arc::new(SourceCap {
            max: max as usize,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, held until the slot is dropped; `None` when
    /// `ip` holds its cap already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            cap: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds open.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// One admitted connection of a source; gives its place back when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    cap: Arc<SourceCap>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The deadlines a [`Watched`] connection keeps.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// How long the client has for its first [`FIRST_BYTES`] bytes.
    pub first_bytes: Duration,
    /// Closed after this long with no byte either way (`None`: never for idleness; HTTP/2
    /// keepalive pings find dead peers).
    pub idle: Option<Duration>,
}

/// A connection that fails its reads once a [`Deadlines`] rule is broken (HTTP then drops it),
/// holding its [`SourceSlot`] while it lives.
pub struct Watched<IO> {
    inner: IO,
    _slot: SourceSlot,
    rules: Deadlines,
    busy: Busy,
    started: Instant,
    last: Instant,
    read: u64,
    timer: Pin<Box<Sleep>>,
}

impl<IO> Watched<IO> {
    /// Watch `inner`, which holds `slot`, from now.
    pub fn new(inner: IO, slot: SourceSlot, rules: Deadlines) -> Self {
        let now = Instant::now();
        Watched {
            inner,
            _slot: slot,
            rules,
            busy: Busy::default(),
            started: now,
            last: now,
            read: 0,
            timer: Box::pin(tokio::time::sleep_until(now + rules.first_bytes)),
        }
    }

    /// The count of requests being answered on this connection: while it is above zero the
    /// connection is not idle, however long the answer takes to compute.
    pub fn busy(&self) -> Busy {
        self.busy.clone()
    }

    /// The broken rule once the timer fires, re-armed for the next check otherwise.
    fn broken(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = if self.read < FIRST_BYTES {
                let due = self.started + self.rules.first_bytes;
                if now >= due {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client sent {} bytes in its first {:?}",
                            self.read, self.rules.first_bytes
                        ),
                    ));
                }
                due
            } else if let Some(idle) = self.rules.idle {
                // A request being answered (a placement over a large fleet can take minutes
                // with no byte either way) is activity; idle counts from when it is done.
                match self.busy.since() {
                    Ok(()) => self.last = now,
                    Err(Some(done)) => self.last = self.last.max(done),
                    Err(None) => {}
                }
                let due = self.last + idle;
                if now >= due {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the connection was idle for {idle:?}"),
                    ));
                }
                due
            } else {
                // Nothing more to watch: park the timer far away.
                now + Duration::from_secs(86_400 * 365)
            };
            self.timer.as_mut().reset(next);
        }
        None
    }
}

/// Requests in flight on one connection ([`Watched::busy`]) and when the last one finished;
/// [`Busy::enter`] counts one for as long as its guard lives.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<Mutex<BusyState>>);

#[derive(Debug, Default)]
struct BusyState {
    answering: usize,
    done_at: Option<Instant>,
}

impl Busy {
    /// Count a request until the guard drops.
    pub fn enter(&self) -> BusyGuard {
        self.state().answering += 1;
        BusyGuard(self.clone())
    }

    /// `Ok(())` while a request is being answered, else when the last one finished.
    fn since(&self) -> Result<(), Option<Instant>> {
        let state = self.state();
        if state.answering > 0 {
            Ok(())
        } else {
            Err(state.done_at)
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BusyState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One request in flight ([`Busy::enter`]).
#[derive(Debug)]
pub struct BusyGuard(Busy);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.answering -= 1;
        state.done_at = Some(Instant::now());
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.broken(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        if got > 0 {
            // The timer is not moved: when it fires it re-arms from the latest activity.
            self.read += got as u64;
            self.last = Instant::now();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.last = Instant::now();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.last = Instant::now();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Watched<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_source_holds_at_most_its_cap_and_gets_places_back() {
        let cap = SourceCap::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = cap.admit(a).unwrap();
        let _two = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_none(), "a third from one address");
        assert!(cap.admit(b).is_some(), "another address is not affected");
        drop(one);
        assert_eq!(cap.open_from(a), 1);
        assert!(cap.admit(a).is_some());
        assert!(SourceCap::new(0).admit(a).is_some(), "0 = no cap");
    }

    fn rules(first: u64, idle: Option<u64>) -> Deadlines {
        Deadlines {
            first_bytes: Duration::from_millis(first),
            idle: idle.map(Duration::from_millis),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_at_the_first_bytes_deadline_and_a_real_start_is_not() {
        let cap = SourceCap::new(0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (client, server) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, cap.admit(ip).unwrap(), rules(1000, None));
        let (_, mut tx) = tokio::io::split(client);
        tx.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 3);
        let cut = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::TimedOut, "{cut}");
        assert!(cut.to_string().contains("sent 3 bytes"), "{cut}");

        let (client, server) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, cap.admit(ip).unwrap(), rules(1000, None));
        let (_, mut tx) = tokio::io::split(client);
        tx.write_all(&[b'x'; 40]).await.unwrap();
        assert_eq!(watched.read(&mut buf).await.unwrap(), 40);
        // Past the deadline with nothing more: still open (no idle rule).
        let waited = tokio::time::timeout(Duration::from_secs(30), watched.read(&mut buf)).await;
        assert!(waited.is_err(), "a client that started properly was cut");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_cut_after_the_idle_time() {
        let cap = SourceCap::new(0);
        let (client, server) = tokio::io::duplex(1024);
        let slot = cap.admit("10.0.0.1".parse().unwrap()).unwrap();
        let mut watched = Watched::new(server, slot, rules(1000, Some(5000)));
        let (_, mut tx) = tokio::io::split(client);
        tx.write_all(&[b'x'; 40]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 40);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        tx.write_all(b"y").await.unwrap();
        assert_eq!(watched.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let cut = watched.read(&mut buf).await.unwrap_err();
        assert!(cut.to_string().contains("idle"), "{cut}");
        assert!(
            started.elapsed() >= Duration::from_millis(4900),
            "cut {:?} after the last byte",
            started.elapsed()
        );
        assert_eq!(cap.open_from("10.0.0.1".parse().unwrap()), 1);
        drop(watched);
        assert_eq!(cap.open_from("10.0.0.1".parse().unwrap()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_answering_a_request_is_not_idle() {
        let cap = SourceCap::new(0);
        let (client, server) = tokio::io::duplex(1024);
        let slot = cap.admit("10.0.0.1".parse().unwrap()).unwrap();
        let mut watched = Watched::new(server, slot, rules(1000, Some(5000)));
        let (_, mut tx) = tokio::io::split(client);
        tx.write_all(&[b'x'; 40]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 40);
        let busy = watched.busy();
        let answering = busy.enter();
        // Four idle times with no byte either way while the request is answered: still open.
        let waited = tokio::time::timeout(Duration::from_secs(20), watched.read(&mut buf)).await;
        assert!(waited.is_err(), "cut while a request was being answered");
        drop(answering);
        let started = Instant::now();
        let cut = watched.read(&mut buf).await.unwrap_err();
        assert!(cut.to_string().contains("idle"), "{cut}");
        assert!(
            started.elapsed() >= Duration::from_millis(4000),
            "cut {:?} after the answer",
            started.elapsed()
        );
    }
}
