//! Asking central for its signed time and correcting the device's clock with it.
//!
//! A device whose clock is years off cannot check any certificate, so it cannot reach central
//! to learn the time: the one way out is `Enrollment.Time` over a channel that checks central's
//! chain and name but not the validity period ([`CentralDialer::time_channel`]). The answer is
//! accepted only when it carries this request's nonce and is signed by the key of the
//! certificate central presented on that connection; the clock then moves to it (either way)
//! but never below the last known good time. Every other call keeps full validity checks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::v1::{EventSeverity, TimeRequest, TimeResponse};
use rand::RngCore;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::channel::{
    enrollment_client, error_chain, CentralDialer, ChannelError, REQUEST_TIMEOUT,
};
use crate::clock::{self, rfc3339, Clock, ClockError, Correction};
use crate::config::AgentConfig;
use crate::events::EventQueue;

/// Least time between two checks made because a connection failed.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How often the last known good time is saved while the clock is verified.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(600);

/// Central's time could not be learnt or used.
#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    /// No TLS connection to central (even without checking validity periods).
    #[error(transparent)]
    Connect(#[from] ChannelError),
    /// The call failed.
    #[error("asking central's time failed: {0}")]
    Call(String),
    /// The answer is not for this request.
    #[error("central's time answer carries another nonce (a stale or replayed answer); ignored")]
    StaleNonce,
    /// The signature does not verify with central's certificate.
    #[error(
        "central's time answer is not signed by the certificate central presented ({0}); ignored"
    )]
    BadSignature(String),
    /// The handshake left no certificate to check the answer with.
    #[error("no verified certificate from central to check its time answer with")]
    NoCertificate,
    /// The time is not plausible.
    #[error("central's time answer {0} ms is not a plausible time; ignored")]
    Implausible(i64),
    /// The clock could not be changed or the floor not read.
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// Central's time, verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentralTime {
    /// Central's time when the answer arrived (its signed time plus half the round trip).
    pub unix_ms: i64,
    /// How long the call took.
    pub round_trip: Duration,
}

/// Checks that `answer` is for `nonce` and signed by the key of `cert_der` (central's TLS
/// certificate, already verified to chain to the fleet CA and carry central's name).
pub fn verify_time_answer(
    cert_der: &[u8],
    nonce: &[u8],
    answer: &TimeResponse,
) -> Result<(), TimeError> {
    if answer.nonce != nonce {
        return Err(TimeError::StaleNonce);
    }
    // Between 2000 and 2400: anything else is a broken or hostile central.
    if !(946_684_800_000..13_569_465_600_000).contains(&answer.unix_ms) {
        return Err(TimeError::Implausible(answer.unix_ms));
    }
    let der = rustls_pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| TimeError::BadSignature(format!("certificate does not parse: {e}")))?;
    cert.verify_signature(
        webpki::ring::ECDSA_P256_SHA256,
        &cairn_proto::time_signed_message(nonce, answer.unix_ms),
        &answer.signature,
    )
    .map_err(|e| TimeError::BadSignature(format!("{e:?}")))
}

/// One `Enrollment.Time` call with a fresh nonce, verified.
pub async fn fetch_central_time(dialer: &CentralDialer) -> Result<CentralTime, TimeError> {
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let (channel, seen) = dialer.time_channel().await?;
    let started = Instant::now();
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        enrollment_client(channel).time(TimeRequest {
            nonce: nonce.to_vec(),
        }),
    )
    .await
    .map_err(|_| TimeError::Call(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    .map_err(|status| TimeError::Call(error_chain(&status)))?
    .into_inner();
    let round_trip = started.elapsed();
    let cert = seen.get().ok_or(TimeError::NoCertificate)?;
    verify_time_answer(&cert, &nonce, &answer)?;
    let half_trip = i64::try_from(round_trip.as_millis() / 2).unwrap_or(0);
    Ok(CentralTime {
        unix_ms: answer.unix_ms.saturating_add(half_trip),
        round_trip,
    })
}

/// Keeps the agent's clock right: checks against central's signed time at start, after failed
/// connections and at an interval, and saves the last known good time.
#[derive(Debug)]
pub struct TimeKeeper {
    dialer: CentralDialer,
    clock: Clock,
    tolerance: Duration,
    check_at_start: bool,
    check_interval: Duration,
    floor_path: PathBuf,
    events: Arc<EventQueue>,
    last_check: Mutex<Option<Instant>>,
}

impl TimeKeeper {
    /// A keeper for the clock of `dialer`, configured by `config`.
    pub fn new(config: &AgentConfig, dialer: CentralDialer, events: Arc<EventQueue>) -> Self {
        TimeKeeper {
            clock: dialer.clock().clone(),
            dialer,
            tolerance: config.time.tolerance(),
            check_at_start: config.time.check_at_start,
            check_interval: config.time.check_interval(),
            floor_path: config.clock_floor_path(),
            events,
            last_check: Mutex::new(None),
        }
    }

    /// The clock kept.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Moves the clock forward to the saved last known good time when it is behind it (what
    /// `cairn-agent clock restore` does early in boot; repeated at the agent's start).
    pub async fn restore(&self) {
        let clock = self.clock.clone();
        let path = self.floor_path.clone();
        match tokio::task::spawn_blocking(move || restore_floor(&clock, &path)).await {
            Ok(Ok(Some(to))) => {
                info!(to = %rfc3339(to), "clock was behind the last known good time; moved forward to it")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot restore the last known good time"),
            Err(e) => warn!(error = %e, "restoring the last known good time panicked"),
        }
    }

    /// Asks central's time and corrects the clock; the outcome is logged, an error returned.
    pub async fn check(&self) -> Result<Correction, TimeError> {
        *self.last_check.lock().expect("time lock") = Some(Instant::now());
        let central = fetch_central_time(&self.dialer).await?;
        let path = self.floor_path.clone();
        let saved = tokio::task::spawn_blocking(move || clock::load_floor(&path))
            .await
            .map_err(|e| TimeError::Call(format!("reading the floor panicked: {e}")))?
            .unwrap_or_else(|e| {
                warn!(error = %e, "ignoring the saved last known good time");
                None
            });
        let floor = saved.max(self.clock.known_good_unix_ms());
        let local = self.clock.now_unix_ms();
        let correction = clock::decide(local, central.unix_ms, floor, self.tolerance);
        match correction {
            Correction::Keep { offset_ms } => {
                info!(offset_ms, round_trip = ?central.round_trip, "clock agrees with central's signed time");
            }
            Correction::Step {
                to_unix_ms,
                offset_ms,
            } => {
                self.clock.step_to(to_unix_ms)?;
                self.events.shift_waiting(-offset_ms);
                let message = format!(
                    "clock was {} central's signed time; stepped from {} to {}",
                    offset_words(offset_ms),
                    rfc3339(local),
                    rfc3339(to_unix_ms)
                );
                warn!(offset_ms, "{message}");
                info!(
                    target: crate::console::TARGET,
                    "CAIRN-CLOCK corrected offset_ms={offset_ms} from={} to={}",
                    rfc3339(local),
                    rfc3339(to_unix_ms)
                );
                self.events
                    .push("clock.corrected", EventSeverity::Warning, &message);
            }
        }
        if floor.is_some_and(|f| {
            central.unix_ms < f - i64::try_from(self.tolerance.as_millis()).unwrap_or(0)
        }) {
            warn!(central = %rfc3339(central.unix_ms), floor = %rfc3339(floor.unwrap_or_default()), "central's time is before this device's last known good time; the clock stays at the latter; check central's clock");
        }
        self.clock
            .mark_verified(central.unix_ms.max(floor.unwrap_or(i64::MIN)));
        self.save_floor().await;
        Ok(correction)
    }

    /// [`TimeKeeper::check`] with the outcome only logged.
    pub async fn check_logged(&self) {
        if let Err(e) = self.check().await {
            warn!(error = %e, "cannot check the clock against central; keeping it as it is");
        }
    }

    /// After a failed connection to central: checks the clock (a wrong clock makes every
    /// certificate look invalid) unless that was done less than [`RETRY_AFTER_FAILURE`] ago.
    pub async fn check_after_failure(&self) {
        let recent = self
            .last_check
            .lock()
            .expect("time lock")
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if !recent {
            self.check_logged().await;
        }
    }

    /// Checks at start when configured (before anything checks a certificate).
    pub async fn start(&self) {
        self.restore().await;
        if self.check_at_start {
            self.check_logged().await;
        }
    }

    /// Saves the last known good time (when central vouched for one in this run).
    pub async fn save_floor(&self) {
        let Some(now) = self.clock.known_good_unix_ms() else {
            return;
        };
        let path = self.floor_path.clone();
        match tokio::task::spawn_blocking(move || clock::save_floor(&path, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot save the last known good time"),
            Err(e) => warn!(error = %e, "saving the last known good time panicked"),
        }
    }

    /// Until `stop`: checks at the configured interval and saves the last known good time
    /// every [`SAVE_INTERVAL`]; saves it once more when stopping.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut next_check = Instant::now() + self.check_interval;
        loop {
            let wait = SAVE_INTERVAL.min(next_check.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if Instant::now() >= next_check {
                self.check_logged().await;
                next_check = Instant::now() + self.check_interval;
            } else {
                self.save_floor().await;
            }
        }
        self.save_floor().await;
    }
}

/// "2 years 3 days behind" / "5 s ahead of".
fn offset_words(offset_ms: i64) -> String {
    let direction = if offset_ms < 0 { "behind" } else { "ahead of" };
    let s = offset_ms.unsigned_abs() / 1000;
    let amount = match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    };
    format!("{amount} {direction}")
}

/// Moves `clock` forward to the floor saved in `path` when it is behind it; returns the time
/// moved to.
pub fn restore_floor(clock: &Clock, path: &std::path::Path) -> Result<Option<i64>, ClockError> {
    let floor = clock::load_floor(path)?;
    let Some(to) = clock::restore_target(clock.now_unix_ms(), floor) else {
        return Ok(None);
    };
    clock.step_to(to)?;
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &rcgen::KeyPair, nonce: &[u8], unix_ms: i64) -> TimeResponse {
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let signature = pair
            .sign(&rng, &cairn_proto::time_signed_message(nonce, unix_ms))
            .unwrap();
        TimeResponse {
            nonce: nonce.to_vec(),
            unix_ms,
            signature: signature.as_ref().to_vec(),
        }
    }

    #[test]
    fn only_a_fresh_answer_signed_by_the_presented_certificate_is_accepted() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["central".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let nonce = [9u8; 32];
        let at = 1_796_000_000_000;
        verify_time_answer(cert.der(), &nonce, &signed(&key, &nonce, at)).unwrap();

        let other = rcgen::KeyPair::generate().unwrap();
        let err = verify_time_answer(cert.der(), &nonce, &signed(&other, &nonce, at)).unwrap_err();
        assert!(matches!(err, TimeError::BadSignature(_)), "{err}");

        let stale = signed(&key, &[8u8; 32], at);
        let err = verify_time_answer(cert.der(), &nonce, &stale).unwrap_err();
        assert!(matches!(err, TimeError::StaleNonce), "{err}");

        // The nonce echoed but the signature made for another one.
        let mut replayed = stale;
        replayed.nonce = nonce.to_vec();
        assert!(matches!(
            verify_time_answer(cert.der(), &nonce, &replayed),
            Err(TimeError::BadSignature(_))
        ));

        let mut moved = signed(&key, &nonce, at);
        moved.unix_ms += 1;
        assert!(matches!(
            verify_time_answer(cert.der(), &nonce, &moved),
            Err(TimeError::BadSignature(_))
        ));

        assert!(matches!(
            verify_time_answer(cert.der(), &nonce, &signed(&key, &nonce, 5)),
            Err(TimeError::Implausible(5))
        ));
    }

    #[test]
    fn offsets_are_worded_for_people() {
        assert_eq!(offset_words(-5_000), "5 s behind");
        assert_eq!(offset_words(3 * 3_600_000), "3 h ahead of");
        assert_eq!(offset_words(-2 * 365 * 86_400_000), "730 days behind");
    }
}
