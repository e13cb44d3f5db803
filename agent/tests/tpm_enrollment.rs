//! Enrollment that proves the TPM, against real swtpm TPMs and a real central: swtpm with EK
//! certificates from a local "vendor" CA (swtpm_localca) that central trusts, the agent's
//! attestation key certifying its TLS key, central's MakeCredential and the TPM's
//! ActivateCredential. Each hostile variant (forged EK hash, untrusted vendor, uncertified key,
//! wrong answer, software key under a TPM-only token) is refused with its own message.
#![cfg(feature = "tpm")]

mod support;

use cairn_agent::tpm_key::TpmKey;
use cairn_agent::{DeviceKey, Phase};
use cairn_api::{DeviceStatus, KeyStorage};
use cairn_proto::v1::{EnrollRequest, EnrollStatus, HardwareFacts, TpmActivation, TpmEvidence};
use cairn_testsupport::central::{config_in, TestCentral};
use cairn_testsupport::{Swtpm, VendorCa};
use sha2::Digest as _;
use support::{agent_config, audit_details, device, wait_phase, RunningAgent};
use tonic::Code;

/// A central that trusts `ca`'s EK certificates.
async fn central_trusting(ca: &VendorCa) -> TestCentral {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.tpm_vendor_cas = ca.anchor_pem_paths();
    TestCentral::start_with(dir, config).await
}

/// A TPM-resident device key on `tpm` with its state in `dir`.
fn tpm_key(tpm: &Swtpm, dir: &std::path::Path) -> TpmKey {
    TpmKey::open_or_create(&tpm.tcti(), &dir.join("device-key.tpm")).unwrap()
}

/// An Enroll request for `key` with its evidence.
fn request(token: &str, key: &std::sync::Arc<TpmKey>, serial: &str) -> EnrollRequest {
    let device_key = DeviceKey::Tpm(key.clone());
    EnrollRequest {
        token: token.into(),
        csr_der: cairn_agent::csr::build_csr(&device_key, serial).unwrap(),
        facts: Some(HardwareFacts {
            serial: serial.into(),
            key_storage: "tpm".into(),
            ..Default::default()
        }),
        tpm: Some(key.evidence().unwrap()),
        activation: None,
    }
}

async fn enroll(
    central: &TestCentral,
    request: EnrollRequest,
) -> Result<cairn_proto::v1::EnrollResponse, tonic::Status> {
    central
        .enrollment()
        .await
        .enroll(request)
        .await
        .map(|r| r.into_inner())
}

fn refused(result: Result<cairn_proto::v1::EnrollResponse, tonic::Status>, code: Code, text: &str) {
    match result {
        Ok(answer) => panic!("expected a refusal containing {text:?}, got {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                status.message().contains(text),
                "expected {text:?} in {:?}",
                status.message()
            );
        }
    }
}

fn spki_sha256(cert_der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).unwrap();
    hex::encode(sha2::Sha256::digest(cert.public_key().raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_proves_its_tpm_and_central_records_the_verified_ek() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let vendor = VendorCa::temporary();
    let tpm = Swtpm::start_with_ek_cert(&vendor);
    let central = central_trusting(&vendor).await;
    let (_, token) = central.tpm_token("auto", None);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, &token, dir.path(), "SN-PROVEN");
    config.key_storage = cairn_agent::config::KeyStorageSetting::Tpm;
    config.tpm_tcti = Some(tpm.tcti());
    let running = RunningAgent::start(config.clone()).await;
    let agent = running.agent.clone();
    wait_phase(&agent, Phase::Connected).await;
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    let shown = device(&central, &identity.device_id);
    assert_eq!(shown.key_storage, KeyStorage::Tpm);
    assert_eq!(shown.status, DeviceStatus::Active);
    // The recorded EK is the certified one, and it is the TPM's own EK.
    let ek_cert = cairn_tpm::ek_certificate(&tpm.tcti()).unwrap().unwrap();
    assert_eq!(shown.tpm_ek_sha256, spki_sha256(&ek_cert));
    assert_eq!(
        shown.tpm_ek_sha256,
        cairn_tpm::ek_public_sha256(&tpm.tcti()).unwrap()
    );
    let audit = audit_details(&central, &identity.device_id);
    assert!(
        audit.iter().any(|d| d.contains("key_storage=tpm tpm_ek=")),
        "{audit:?}"
    );
    assert!(config
        .state_dir
        .join(cairn_agent::tpm_key::AK_FILE)
        .exists());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_untrusted_uncertified_wrong_and_software_are_each_refused() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let vendor = VendorCa::temporary();
    let other_vendor = VendorCa::temporary();
    let tpm = Swtpm::start_with_ek_cert(&vendor);
    let foreign_tpm = Swtpm::start_with_ek_cert(&other_vendor);
    let central = central_trusting(&vendor).await;
    let (_, tpm_only) = central.tpm_token("auto", None);
    let (_, open) = central.token("auto", None, None);
    // Evidence of a second key in the same TPM, certified by its own AK. (One device key open
    // per swtpm at a time: each stays loaded, and swtpm holds three objects.)
    let other_dir = tempfile::tempdir().unwrap();
    let other_evidence = tpm_key(&tpm, other_dir.path()).evidence().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = std::sync::Arc::new(tpm_key(&tpm, dir.path()));
    let victim_ek_cert = key.evidence().unwrap().ek_certificate_der;

    // A software key (no evidence) under a TPM-only token.
    let software = cairn_testsupport::central::SimDevice::new("SN-SOFT");
    refused(
        software.enroll(&central, &tpm_only).await,
        Code::PermissionDenied,
        "sent no TPM evidence",
    );
    // ...is fine under a token that allows software keys, and is recorded as software.
    let answer = software.enroll(&central, &open).await.unwrap();
    assert_eq!(answer.status, EnrollStatus::Approved as i32);
    assert_eq!(
        device(&central, &answer.device_id).key_storage,
        KeyStorage::Software
    );

    // A forged EK hash: without evidence, and contradicting the certified EK.
    let mut forged = software_request("SN-FORGED", &open);
    forged.facts.as_mut().unwrap().tpm_ek_sha256 = "ab".repeat(32);
    refused(
        enroll(&central, forged).await,
        Code::InvalidArgument,
        "sends no TPM evidence",
    );
    let mut contradicting = request(&tpm_only, &key, "SN-CONTRA");
    contradicting.facts.as_mut().unwrap().tpm_ek_sha256 = "cd".repeat(32);
    refused(
        enroll(&central, contradicting).await,
        Code::InvalidArgument,
        "is not the EK of the certificate",
    );

    // An EK certificate from a vendor central does not trust.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = std::sync::Arc::new(tpm_key(&foreign_tpm, foreign_dir.path()));
    refused(
        enroll(&central, request(&tpm_only, &foreign, "SN-FOREIGN")).await,
        Code::PermissionDenied,
        "endorsement key certificate refused",
    );

    // A TLS key the AK did not certify: the public area of another key for this CSR.
    let mut swapped = request(&tpm_only, &key, "SN-SWAP");
    swapped.tpm = Some(TpmEvidence {
        device_key_public: other_evidence.device_key_public.clone(),
        ..swapped.tpm.unwrap()
    });
    refused(
        enroll(&central, swapped).await,
        Code::InvalidArgument,
        "device key",
    );
    // The certification of another key in the same TPM presented for this one.
    let mut uncertified = request(&tpm_only, &key, "SN-UNCERT");
    uncertified.tpm = Some(TpmEvidence {
        ak_public: other_evidence.ak_public,
        certify_info: other_evidence.certify_info,
        certify_signature: other_evidence.certify_signature,
        ..uncertified.tpm.unwrap()
    });
    refused(
        enroll(&central, uncertified).await,
        Code::InvalidArgument,
        "certification of the device key",
    );

    // A wrong ActivateCredential answer.
    let mut honest = request(&tpm_only, &key, "SN-TPM");
    let challenge = enroll(&central, honest.clone()).await.unwrap();
    assert_eq!(challenge.status, EnrollStatus::Challenge as i32);
    let challenge = challenge.challenge.unwrap();
    honest.activation = Some(TpmActivation {
        ticket: challenge.ticket.clone(),
        secret: vec![0u8; 32],
    });
    refused(
        enroll(&central, honest.clone()).await,
        Code::PermissionDenied,
        "did not return the challenge's secret",
    );
    // A ticket altered in transit.
    let mut bent = challenge.ticket.clone();
    bent[20] ^= 1;
    honest.activation = Some(TpmActivation {
        ticket: bent,
        secret: vec![0u8; 32],
    });
    refused(
        enroll(&central, honest.clone()).await,
        Code::PermissionDenied,
        "not made by this fleet's central",
    );
    // Another TPM cannot open this TPM's credential.
    assert!(foreign.activate_credential(&challenge).is_err());
    // The right answer from the right TPM is admitted, as a proven TPM.
    let secret = key.activate_credential(&challenge).unwrap();
    honest.activation = Some(TpmActivation {
        ticket: challenge.ticket,
        secret: secret.to_vec(),
    });
    let admitted = enroll(&central, honest).await.unwrap();
    assert_eq!(admitted.status, EnrollStatus::Approved as i32);
    let shown = device(&central, &admitted.device_id);
    assert_eq!(shown.key_storage, KeyStorage::Tpm);
    assert_eq!(
        shown.tpm_ek_sha256,
        cairn_tpm::ek_public_sha256(&tpm.tcti()).unwrap()
    );

    // A victim's genuine EK certificate with the attacker's own AK (in another TPM of the same
    // vendor): every check before the challenge passes, but only the victim's TPM could open
    // the credential, and the attacker's TPM cannot.
    let tpm_b = Swtpm::start_with_ek_cert(&vendor);
    let dir_b = tempfile::tempdir().unwrap();
    let key_b = std::sync::Arc::new(tpm_key(&tpm_b, dir_b.path()));
    let mut borrowed = request(&tpm_only, &key_b, "SN-BORROWED-EK");
    borrowed.tpm.as_mut().unwrap().ek_certificate_der = victim_ek_cert.clone();
    let challenge_b = enroll(&central, borrowed.clone()).await.unwrap();
    assert_eq!(challenge_b.status, EnrollStatus::Challenge as i32);
    let challenge_b = challenge_b.challenge.unwrap();
    assert!(key_b.activate_credential(&challenge_b).is_err());
    borrowed.activation = Some(TpmActivation {
        ticket: challenge_b.ticket,
        secret: vec![7u8; 32],
    });
    refused(
        enroll(&central, borrowed).await,
        Code::PermissionDenied,
        "did not return the challenge's secret",
    );

    // A revoked device's TPM cannot come back with a new key.
    central.admin_call(
        "POST",
        &format!("/api/v1/devices/{}/revoke", admitted.device_id),
        None,
    );
    drop(key);
    let again_dir = tempfile::tempdir().unwrap();
    let again = std::sync::Arc::new(tpm_key(&tpm, again_dir.path()));
    refused(
        enroll(&central, request(&tpm_only, &again, "SN-TPM-AGAIN")).await,
        Code::PermissionDenied,
        "belongs to revoked device",
    );

    // Under a token allowing software keys an untrusted vendor's TPM is admitted, but not as a
    // proven TPM, and its unproven EK is not recorded.
    let answer = enroll(&central, request(&open, &foreign, "SN-FOREIGN"))
        .await
        .unwrap();
    assert_eq!(answer.status, EnrollStatus::Approved as i32);
    let shown = device(&central, &answer.device_id);
    assert_eq!(shown.key_storage, KeyStorage::TpmUnverified);
    assert_eq!(shown.tpm_ek_sha256, "");
}

/// A software-keyed Enroll request (no evidence).
fn software_request(serial: &str, token: &str) -> EnrollRequest {
    cairn_testsupport::central::SimDevice::new(serial).request(token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_by_ek_admits_only_the_tpm_that_proves_that_ek() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let vendor = VendorCa::temporary();
    let tpm = Swtpm::start_with_ek_cert(&vendor);
    let central = central_trusting(&vendor).await;
    let (_, claim_token) = central.token("claim", None, None);
    let ek = cairn_tpm::ek_public_sha256(&tpm.tcti()).unwrap();
    central.admin_call(
        "POST",
        "/api/v1/claims",
        Some(serde_json::json!({ "tpm_ek_sha256": ek })),
    );
    // A box that only says it has this EK is refused, and the claim stays free.
    let mut squatter = software_request("SN-SQUAT", &claim_token);
    squatter.facts.as_mut().unwrap().tpm_ek_sha256 = ek.clone();
    refused(
        enroll(&central, squatter).await,
        Code::InvalidArgument,
        "sends no TPM evidence",
    );
    let claims: cairn_api::ClaimList = central.get("/api/v1/claims");
    assert_eq!(claims.claims[0].device_id, None);
    // The TPM holding that EK proves it and takes the claim.
    let dir = tempfile::tempdir().unwrap();
    let key = std::sync::Arc::new(tpm_key(&tpm, dir.path()));
    let mut honest = request(&claim_token, &key, "SN-CLAIMED");
    let challenge = enroll(&central, honest.clone())
        .await
        .unwrap()
        .challenge
        .unwrap();
    honest.activation = Some(TpmActivation {
        secret: key.activate_credential(&challenge).unwrap().to_vec(),
        ticket: challenge.ticket,
    });
    let admitted = enroll(&central, honest).await.unwrap();
    assert_eq!(admitted.status, EnrollStatus::Approved as i32);
    let claims: cairn_api::ClaimList = central.get("/api/v1/claims");
    assert_eq!(
        claims.claims[0].device_id.as_deref(),
        Some(admitted.device_id.as_str())
    );
}
