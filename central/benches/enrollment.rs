//! Enrollment benchmark: N devices enroll concurrently against one in-process central on
//! loopback (real TLS, the raw gRPC clients of cairn-testsupport) proving a TPM, against a
//! baseline of software-key enrollments run before and after them. The TPMs are cairn-attest's emulator: this benchmark lists the
//! emulator's vendor CA in central's `tpm_vendor_cas`, and central verifies them exactly as it
//! verifies real TPMs (EK certificate path, AK, certification, MakeCredential). Last, central's
//! cost to verify one TPM quote, and to judge one whole attestation report (quote, a real
//! firmware event log, appraisal), each against one plain ECDSA P-256 verification, and the
//! judgements against the plain enrollments. Each figure is
//! printed with its ratio to the baseline measured in the same run.
//!
//! TPMs (RSA-2048 EK generation) and all requests are made before anything is timed. The
//! emulator's ActivateCredential (an RSA-2048 decryption per device) stays in the TPM round trip
//! and shares the machine with central, so its cost alone is printed too.
//!
//! `CAIRN_BENCH_ENROLL=200 cargo bench -p cairn-central --bench enrollment`

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_attest::credential::make_credential;
use cairn_attest::ekcert::{verify_ek_certificate, TrustAnchors};
use cairn_attest::emulator::{EmulatorVendor, SoftwareTpm};
use cairn_attest::keys::verify_quote;
use cairn_attest::tpm2::TpmPublic;
use cairn_central::attestation::{judge, Expectations, Verdict};
use cairn_central::store::attestation::AttestationRecord;
use cairn_proto::v1::{
    AttestationReport, EnrollRequest, EnrollResponse, EnrollStatus, TpmActivation, TpmEvidence,
};
use cairn_testsupport::central::{config_in, SimDevice, TestCentral};
use rcgen::PublicKeyData as _;
use ring::rand::SystemRandom;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Enroll exchanges in flight at once.
const CONCURRENCY: usize = 32;
/// Software enrollments before the first measurement, not counted.
const WARM_UP: usize = 8;
/// The PCRs of each quote: firmware, option ROMs, boot loader, Secure Boot policy, the UKI.
const QUOTED_PCRS: [u8; 5] = [0, 2, 4, 7, 11];
/// Distinct quotes verified in each round.
const QUOTES: usize = 1000;
/// Credentials activated to time the emulator's ActivateCredential alone.
const ACTIVATIONS: u32 = 100;
/// The two verification rates are measured over alternating rounds lasting this long together.
const MEASURE_AT_LEAST: Duration = Duration::from_secs(2);

fn device_count() -> usize {
    std::env::var("CAIRN_BENCH_ENROLL").map_or(200, |n| {
        n.trim()
            .parse()
            .expect("CAIRN_BENCH_ENROLL is a number of devices")
    })
}

/// `n` software TPMs of `vendor`, made on every core (RSA key generation dominates).
fn make_tpms(vendor: &EmulatorVendor, n: usize) -> Vec<Arc<SoftwareTpm>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    std::thread::scope(|scope| {
        let makers: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                scope.spawn(move || {
                    (0..count)
                        .map(|_| Arc::new(vendor.tpm()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        makers
            .into_iter()
            .flat_map(|maker| maker.join().expect("a TPM maker thread panicked"))
            .collect()
    })
}

/// An Enroll request with a fresh software key, its CSR and its TPM's evidence for that key.
fn tpm_request(token: &str, serial: &str, tpm: &SoftwareTpm) -> EnrollRequest {
    let device = SimDevice::new(serial);
    let mut request = device.request(token);
    let spki = device.key.subject_public_key_info();
    let evidence = tpm
        .evidence(&spki, &cairn_proto::certify_qualifying_data(&spki))
        .expect("the emulator certifies a P-256 device key");
    request.tpm = Some(TpmEvidence {
        ek_certificate_der: evidence.ek_certificate_der,
        ek_chain_der: evidence.ek_chain_der,
        ak_public: evidence.ak_public,
        device_key_public: evidence.device_key_public,
        certify_info: evidence.certify_info,
        certify_signature: evidence.certify_signature,
    });
    if let Some(facts) = request.facts.as_mut() {
        facts.key_storage = "tpm".into();
    }
    request
}

fn assert_approved(response: &EnrollResponse) {
    assert_eq!(
        response.status,
        EnrollStatus::Approved as i32,
        "an auto token approves: {response:?}"
    );
    assert!(
        !response.certificate_der.is_empty(),
        "approved without a certificate"
    );
}

/// One Enroll call on a fresh TLS connection.
async fn enroll_software(central: Arc<TestCentral>, request: EnrollRequest) {
    let response = central
        .enrollment()
        .await
        .enroll(request)
        .await
        .expect("central accepts a software enrollment")
        .into_inner();
    assert_approved(&response);
}

/// Enroll with evidence, answer the credential challenge with the TPM, enroll again with the
/// answer; one TLS connection, as the agent does it.
async fn enroll_tpm(central: Arc<TestCentral>, mut request: EnrollRequest, tpm: Arc<SoftwareTpm>) {
    let mut client = central.enrollment().await;
    let challenged = client
        .enroll(request.clone())
        .await
        .expect("central accepts the emulator's TPM evidence")
        .into_inner();
    assert_eq!(
        challenged.status,
        EnrollStatus::Challenge as i32,
        "TPM evidence is answered with a challenge: {challenged:?}"
    );
    let challenge = challenged.challenge.expect("CHALLENGE carries a challenge");
    let ticket = challenge.ticket.clone();
    let secret = tokio::task::spawn_blocking(move || {
        tpm.activate_credential(&challenge.credential_blob, &challenge.encrypted_secret)
    })
    .await
    .expect("the activation task ran")
    .expect("the emulator activates central's credential for its AK");
    request.activation = Some(TpmActivation {
        ticket,
        secret: secret.to_vec(),
    });
    let response = client
        .enroll(request)
        .await
        .expect("central accepts the TPM's answer")
        .into_inner();
    assert_approved(&response);
}

/// Runs `jobs` with at most [`CONCURRENCY`] at a time; how long they all took.
async fn timed_concurrently<F>(jobs: Vec<F>) -> Duration
where
    F: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut running = JoinSet::new();
    for job in jobs {
        let limit = limit.clone();
        running.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("the semaphore stays open");
            job.await;
        });
    }
    while let Some(finished) = running.join_next().await {
        finished.expect("an enrollment failed");
    }
    started.elapsed()
}

/// `n` new software-key devices enrolled with `token`, serials starting with `prefix`; how long
/// it took.
async fn software_round(
    central: &Arc<TestCentral>,
    token: &str,
    prefix: &str,
    n: usize,
) -> Duration {
    let jobs: Vec<_> = (0..n)
        .map(|i| {
            let request = SimDevice::new(&format!("{prefix}-{i:06}")).request(token);
            enroll_software(central.clone(), request)
        })
        .collect();
    timed_concurrently(jobs).await
}

/// (a) and (b): software and TPM-proven enrollments per second; returns the software rate.
async fn bench_enrollment(vendor: &EmulatorVendor, tpms: &[Arc<SoftwareTpm>]) -> f64 {
    let n = tpms.len();
    let dir = tempfile::tempdir().unwrap();
    let vendor_ca = dir.path().join("emulator-vendor-ca.pem");
    std::fs::write(&vendor_ca, vendor.ca_cert_pem()).unwrap();
    let mut config = config_in(dir.path());
    assert_eq!(
        config.enroll_attempts_per_source_per_minute, 0,
        "every bench device enrolls from 127.0.0.1; config_in must turn the per-source limit off"
    );
    // The emulator's CA, listed like a TPM vendor's: central has no test mode.
    config.tpm_vendor_cas = vec![vendor_ca];
    let central = Arc::new(TestCentral::start_with(dir, config).await);

    let (_, warm_up_token) = central.token("auto", None, None);
    let warm_up: Vec<_> = (0..WARM_UP)
        .map(|i| {
            enroll_software(
                central.clone(),
                SimDevice::new(&format!("WARM-{i}")).request(&warm_up_token),
            )
        })
        .collect();
    timed_concurrently(warm_up).await;

    // The baseline runs before and after the TPM devices, so load that drifts during the run
    // (other work on the machine) weighs on both alike.
    let (_, software_token) = central.token("auto", None, None);
    let software_before = software_round(&central, &software_token, "SW-A", n).await;
    let (_, tpm_token) = central.tpm_token("auto", None);
    let proving: Vec<_> = tpms
        .iter()
        .enumerate()
        .map(|(i, tpm)| {
            let request = tpm_request(&tpm_token, &format!("TPM-{i:06}"), tpm);
            enroll_tpm(central.clone(), request, tpm.clone())
        })
        .collect();
    let tpm_secs = timed_concurrently(proving).await.as_secs_f64();
    let software_after = software_round(&central, &software_token, "SW-B", n).await;

    let software_rate = 2.0 * n as f64 / (software_before + software_after).as_secs_f64();
    let tpm_rate = n as f64 / tpm_secs;
    println!(
        "devices={n:>6}  baseline software enrollments/s={software_rate:>8.1}  (one Enroll call, {CONCURRENCY} in flight; {:.1} before, {:.1} after the TPM devices)",
        n as f64 / software_before.as_secs_f64(),
        n as f64 / software_after.as_secs_f64()
    );
    println!(
        "devices={n:>6}  tpm enrollments/s={tpm_rate:>8.1}  ratio to software enrollment={:.2}  (evidence, challenge, ActivateCredential, approval)",
        tpm_rate / software_rate
    );
    software_rate
}

/// The device side of the TPM round trip alone: the emulator's ActivateCredential, per call on
/// one thread.
fn activation_cost(vendor: &EmulatorVendor, tpm: &SoftwareTpm) -> Duration {
    let anchors = TrustAnchors::from_pem(vendor.ca_cert_pem().as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ek = verify_ek_certificate(tpm.ek_certificate_der(), &[], &anchors, now)
        .expect("the emulator's EK certificate chains to its vendor CA")
        .public;
    let rng = SystemRandom::new();
    let credentials: Vec<_> = (0..ACTIVATIONS)
        .map(|_| make_credential(&ek, tpm.ak_name(), &[7; 32], &rng).unwrap())
        .collect();
    let started = Instant::now();
    for made in &credentials {
        tpm.activate_credential(&made.id_object, &made.encrypted_secret)
            .expect("the emulator activates a credential for its AK");
    }
    started.elapsed() / ACTIVATIONS
}

/// A quote to verify, with what central knows when it verifies it.
struct QuoteSample {
    ak: TpmPublic,
    ak_point: Vec<u8>,
    nonce: Vec<u8>,
    attest: Vec<u8>,
    signature: Vec<u8>,
}

/// Verifications per second of `baseline` and `measured` (each verifies [`QUOTES`] items per
/// round), their rounds alternating until both together took [`MEASURE_AT_LEAST`], so load
/// that changes meanwhile weighs on both alike.
fn interleaved_rates(mut baseline: impl FnMut(), mut measured: impl FnMut()) -> (f64, f64) {
    baseline();
    measured();
    let (mut baseline_time, mut measured_time) = (Duration::ZERO, Duration::ZERO);
    let mut rounds = 0u32;
    while baseline_time + measured_time < MEASURE_AT_LEAST {
        let started = Instant::now();
        baseline();
        let between = Instant::now();
        measured();
        baseline_time += between - started;
        measured_time += between.elapsed();
        rounds += 1;
    }
    let rate = |time: Duration| f64::from(rounds) * QUOTES as f64 / time.as_secs_f64();
    (rate(baseline_time), rate(measured_time))
}

/// (c): `verify_quote` per second on one thread, against ring's verification of the same
/// signatures over the same messages.
fn bench_quote_verification(tpms: &[Arc<SoftwareTpm>]) -> f64 {
    let pcrs = real_boot_pcrs();
    let samples: Vec<QuoteSample> = (0..QUOTES)
        .map(|i| {
            let tpm = &tpms[i % tpms.len()];
            let nonce = Sha256::digest(i.to_be_bytes()).to_vec();
            let quote = tpm
                .quote(&nonce, &pcrs)
                .expect("the emulator quotes PCRs 0-23");
            let ak = TpmPublic::parse(&tpm.ak_public()).expect("the emulator's AK parses");
            let spki = ak.p256_spki_der().expect("the AK is a P-256 key");
            QuoteSample {
                ak_point: spki[spki.len() - 65..].to_vec(),
                ak,
                nonce,
                attest: quote.attest,
                signature: quote.signature_der,
            }
        })
        .collect();

    let (signature_rate, quote_rate) = interleaved_rates(
        || {
            for s in &samples {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &s.ak_point)
                    .verify(&s.attest, &s.signature)
                    .expect("the AK's signature verifies");
            }
        },
        || {
            for s in &samples {
                verify_quote(&s.ak, &s.attest, &s.signature, &s.nonce, &pcrs)
                    .expect("the emulator's quote verifies");
            }
        },
    );
    let (judged_baseline, judge_rate) = bench_judge(&samples, &pcrs);
    let message_len = samples[0].attest.len();
    println!(
        "quotes={QUOTES:>6}  baseline ECDSA P-256 verifications/s={signature_rate:>9.1}  (ring, one thread, the quotes' {message_len}-byte messages)"
    );
    println!(
        "quotes={QUOTES:>6}  quote verifications/s={quote_rate:>9.1}  ratio to ECDSA verification={:.2}  (verify_quote, SHA-256 PCRs {QUOTED_PCRS:?}, one thread)",
        quote_rate / signature_rate
    );
    println!(
        "quotes={QUOTES:>6}  baseline ECDSA P-256 verifications/s={judged_baseline:>9.1}  (second interleaved run)"
    );
    println!(
        "quotes={QUOTES:>6}  attestation judgements/s={judge_rate:>9.1}  ratio to ECDSA verification={:.2}  (attestation::judge: quote + a real {} KiB OVMF event log replayed and appraised against a pinned reference and the bundle's UKI value, one thread)",
        judge_rate / judged_baseline,
        REAL_BOOT_LOG.len() / 1024
    );
    judge_rate
}

/// The firmware event log and quoted PCRs of a real Secure Boot of the image under QEMU (see
/// attest/tests/data/README.md).
const REAL_BOOT_LOG: &[u8] = include_bytes!("../../attest/tests/data/ovmf_event_log.bin");
const REAL_BOOT_PCRS: &str = include_str!("../../attest/tests/data/ovmf_quoted_pcrs.txt");

fn real_boot_pcrs() -> BTreeMap<u8, [u8; 32]> {
    let pcrs: BTreeMap<u8, [u8; 32]> = REAL_BOOT_PCRS
        .lines()
        .map(|line| {
            let (pcr, value) = line.split_once(' ').expect("\"pcr hex\" lines");
            let value = hex::decode(value).expect("hex PCR value");
            (
                pcr.parse().expect("a PCR index"),
                value.try_into().expect("a SHA-256 PCR value"),
            )
        })
        .collect();
    assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), QUOTED_PCRS);
    pcrs
}

/// (d): central's whole judgement of a report (the work of one attestation besides storing
/// it) per second, against the same ECDSA baseline. Each sample's quote covers the real boot's
/// PCRs; the device's reference and UKI value are those of its first verified quote.
fn bench_judge(samples: &[QuoteSample], pcrs: &BTreeMap<u8, [u8; 32]>) -> (f64, f64) {
    let reports: Vec<AttestationReport> = samples
        .iter()
        .map(|s| AttestationReport {
            nonce: s.nonce.clone(),
            quote: s.attest.clone(),
            signature: s.signature.clone(),
            pcrs: pcrs
                .iter()
                .map(|(i, v)| (u32::from(*i), v.to_vec()))
                .collect(),
            event_log: REAL_BOOT_LOG.to_vec(),
            os_version: "0.1.0".into(),
            error: String::new(),
        })
        .collect();
    let ak_publics: Vec<Vec<u8>> = samples.iter().map(|s| s.ak.raw().to_vec()).collect();
    let expect = |i: usize, record: Option<&AttestationRecord>, uki: &[String]| {
        judge(
            &reports[i],
            Expectations {
                ak_public: &ak_publics[i],
                nonce: &samples[i].nonce,
                record,
                bundle_uki: uki,
                expected_versions: &[],
                require_secure_boot: true,
            },
        )
    };
    let Verdict::Verified { reference, uki } = expect(0, None, &[]) else {
        panic!("the real boot does not verify at first use");
    };
    let record = AttestationRecord {
        state: "verified".into(),
        reference: Some(reference),
        os_version: Some("0.1.0".into()),
        ..Default::default()
    };
    let bundle_uki: Vec<String> = uki
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, hex)| hex.to_owned()))
        .collect();
    interleaved_rates(
        || {
            for s in samples {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &s.ak_point)
                    .verify(&s.attest, &s.signature)
                    .expect("the AK's signature verifies");
            }
        },
        || {
            for i in 0..samples.len() {
                let verdict = expect(i, Some(&record), &bundle_uki);
                assert!(matches!(verdict, Verdict::Verified { .. }), "{verdict:?}");
            }
        },
    )
}

fn main() {
    let n = device_count();
    let vendor = EmulatorVendor::new();
    let started = Instant::now();
    let tpms = make_tpms(&vendor, n);
    println!(
        "prepared {n} software TPMs in {:.1} s (RSA-2048 EK generation, not timed)",
        started.elapsed().as_secs_f64()
    );
    // Before central starts, so its background tasks do not compete.
    let judge_rate = bench_quote_verification(&tpms);
    println!(
        "emulator ActivateCredential = {:.2} ms each on one thread (device side, inside every TPM enrollment below)",
        activation_cost(&vendor, &tpms[0]).as_secs_f64() * 1000.0
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let software_rate = runtime.block_on(bench_enrollment(&vendor, &tpms));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "attestation judgements/s (one thread) / software enrollments/s (central, {cores} cores, over loopback TLS) = {:.1}",
        judge_rate / software_rate
    );
}
