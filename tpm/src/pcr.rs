//! Platform Configuration Registers (SHA-256 bank): which PCRs a secret is sealed to, reading their
//! values, extending them, and the PolicyPCR digest computed in software.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
};
use tss_esapi::Context;

use crate::tcti::open_context;
use crate::TpmError;

/// Number of PCRs of a PC Client TPM (0..=23).
pub const PCR_COUNT: u8 = 24;
/// Size of a SHA-256 PCR value.
pub const PCR_VALUE_LEN: usize = 32;
/// `TPM_ALG_SHA256`.
pub(crate) const TPM_ALG_SHA256: u16 = 0x000B;
/// `TPM_CC_PolicyPCR`.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// `sizeofSelect` tss-esapi sends (3 octets = PCRs 0..=23), part of the policy digest.
const SIZE_OF_SELECT: usize = 3;

/// SHA-256 PCR values by PCR index.
pub type PcrValues = BTreeMap<u8, [u8; PCR_VALUE_LEN]>;

/// A non-empty set of PCR indices (0..=23) in the SHA-256 bank, e.g. `7,11`: PCR 7 = Secure Boot
/// state and keys, PCR 11 = the UKI (kernel, initrd, command line) as systemd-stub measures it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PcrSelection(BTreeSet<u8>);

impl PcrSelection {
    /// The selection of `indices` (duplicates collapse).
    ///
    /// # Errors
    /// [`TpmError::BadPcrSelection`] when it is empty or an index is 24 or more.
    pub fn new(indices: impl IntoIterator<Item = u8>) -> Result<Self, TpmError> {
        let set: BTreeSet<u8> = indices.into_iter().collect();
        if set.is_empty() {
            return Err(bad_selection("no PCR selected"));
        }
        if let Some(bad) = set.iter().find(|&&i| i >= PCR_COUNT) {
            return Err(bad_selection(&format!("PCR {bad} does not exist (0..=23)")));
        }
        Ok(PcrSelection(set))
    }

    /// The indices, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().copied()
    }

    /// Whether `index` is selected.
    pub fn contains(&self, index: u8) -> bool {
        self.0.contains(&index)
    }

    /// The 3-octet `pcrSelect` bitmap (PCR n is bit n % 8 of octet n / 8).
    pub(crate) fn bitmap(&self) -> [u8; SIZE_OF_SELECT] {
        let mut map = [0u8; SIZE_OF_SELECT];
        for i in self.indices() {
            map[usize::from(i / 8)] |= 1 << (i % 8);
        }
        map
    }

    /// The selection as tss-esapi's list (SHA-256 bank only).
    pub(crate) fn to_tss(&self) -> Result<PcrSelectionList, tss_esapi::Error> {
        let slots = self
            .indices()
            .map(|i| PcrSlot::try_from(1u32 << i))
            .collect::<Result<Vec<_>, _>>()?;
        PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
    }
}

/// Parses `"7,11"` (also `"7+11"` as systemd writes it, spaces allowed).
impl FromStr for PcrSelection {
    type Err = TpmError;

    fn from_str(s: &str) -> Result<Self, TpmError> {
        let indices = s
            .split([',', '+'])
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<u8>()
                    .map_err(|_| bad_selection(&format!("{part:?} in {s:?} is not a PCR number")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        PcrSelection::new(indices)
    }
}

/// `7,11`.
impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.indices().map(|i| i.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

fn bad_selection(reason: &str) -> TpmError {
    TpmError::BadPcrSelection {
        reason: reason.to_string(),
    }
}

/// Read the current SHA-256 values of the selected PCRs.
///
/// # Errors
/// [`TpmError::BadTcti`] / [`TpmError::OpenTcti`] when the TPM cannot be reached,
/// [`TpmError::ReadPcrs`] when the TPM refuses or has no SHA-256 bank.
pub fn read_pcrs(tcti: &str, selection: &PcrSelection) -> Result<PcrValues, TpmError> {
    let mut context = open_context(tcti)?;
    read_pcrs_with(&mut context, selection)
}

/// [`read_pcrs`] on an open context.
pub(crate) fn read_pcrs_with(
    context: &mut Context,
    selection: &PcrSelection,
) -> Result<PcrValues, TpmError> {
    let _span = tracing::info_span!("tpm.pcr_read", pcrs = %selection).entered();
    let err = |reason: String| TpmError::ReadPcrs {
        pcrs: selection.to_string(),
        reason,
    };
    let list = selection.to_tss().map_err(|e| err(e.to_string()))?;
    let data =
        tss_esapi::abstraction::pcr::read_all(context, list).map_err(|e| err(e.to_string()))?;
    let bank = data
        .pcr_bank(HashingAlgorithm::Sha256)
        .ok_or_else(|| err("the TPM has no active SHA-256 PCR bank".to_string()))?;
    let mut values = PcrValues::new();
    for index in selection.indices() {
        let slot = PcrSlot::try_from(1u32 << index).map_err(|e| err(e.to_string()))?;
        let digest = bank
            .get_digest(slot)
            .ok_or_else(|| err(format!("the TPM returned no value for PCR {index}")))?;
        let value: [u8; PCR_VALUE_LEN] = digest.value().try_into().map_err(|_| {
            err(format!(
                "PCR {index} value has {} bytes, not 32",
                digest.value().len()
            ))
        })?;
        values.insert(index, value);
    }
    Ok(values)
}

/// Extend PCR `index` (SHA-256 bank) with SHA-256(`event`), as a measurement: the new value is
/// SHA-256(old value || SHA-256(event)).
///
/// Use it to measure Cairn's own boot events, e.g. to close a sealed secret for the rest of the
/// boot once it has been used (a policy that includes that PCR then no longer matches). PCRs 0..=15
/// cannot be reset before the next reboot; 16 and 23 are the debug/application PCRs.
///
/// # Errors
/// [`TpmError::BadPcrSelection`] for an index of 24 or more, [`TpmError::BadTcti`] /
/// [`TpmError::OpenTcti`], [`TpmError::ExtendPcr`] when the TPM refuses (PCR locality rules).
pub fn extend_pcr(tcti: &str, index: u8, event: &[u8]) -> Result<(), TpmError> {
    PcrSelection::new([index])?;
    let mut context = open_context(tcti)?;
    let _span = tracing::info_span!("tpm.pcr_extend", pcr = index).entered();
    let err = |source| TpmError::ExtendPcr { index, source };
    let handle = PcrHandle::try_from(u32::from(index)).map_err(err)?;
    let digest = Digest::try_from(Sha256::digest(event).to_vec()).map_err(err)?;
    let mut values = DigestValues::new();
    values.set(HashingAlgorithm::Sha256, digest);
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.pcr_extend(handle, values)
        })
        .map_err(err)
}

/// The value PCR `old` takes after extending it with `event_digest` (SHA-256 bank).
pub fn extended_value(old: &[u8; PCR_VALUE_LEN], event_digest: &[u8]) -> [u8; PCR_VALUE_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(old);
    hasher.update(event_digest);
    hasher.finalize().into()
}

/// The policy digest of a single `TPM2_PolicyPCR` over the SHA-256 bank with these expected
/// values, starting from an empty policy (TPM 2.0 Part 3, 23.7):
///
/// `SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values in index order))`.
///
/// Used to check that a sealed blob's recorded PCR values are the ones its policy was built from,
/// and (later) to compute the policy for predicted PCR values of an update.
pub(crate) fn policy_pcr_digest(values: &PcrValues) -> Result<[u8; 32], TpmError> {
    let selection = PcrSelection::new(values.keys().copied())?;
    let mut policy = Sha256::new();
    policy.update([0u8; 32]);
    policy.update(TPM_CC_POLICY_PCR.to_be_bytes());
    // TPML_PCR_SELECTION: count, then one TPMS_PCR_SELECTION {hash, sizeofSelect, pcrSelect}.
    policy.update(1u32.to_be_bytes());
    policy.update(TPM_ALG_SHA256.to_be_bytes());
    policy.update([SIZE_OF_SELECT as u8]);
    policy.update(selection.bitmap());
    policy.update(pcr_values_digest(values));
    Ok(policy.finalize().into())
}

/// SHA-256 of the concatenated values (index order): the `pcrDigest` of `TPM2_PolicyPCR`.
pub(crate) fn pcr_values_digest(values: &PcrValues) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for value in values.values() {
        hasher.update(value);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_selections() {
        let sel: PcrSelection = "7, 11".parse().unwrap();
        assert_eq!(sel.indices().collect::<Vec<_>>(), vec![7, 11]);
        assert_eq!(sel.to_string(), "7,11");
        assert_eq!("11+7+7".parse::<PcrSelection>().unwrap(), sel);
        assert_eq!(sel.bitmap(), [0x80, 0x08, 0x00]);
        assert_eq!(
            PcrSelection::new([0, 23]).unwrap().bitmap(),
            [0x01, 0x00, 0x80]
        );
        sel.to_tss().unwrap();
    }

    #[test]
    fn rejects_bad_selections() {
        for bad in ["", "24", "7,x", "-1", ",", "256"] {
            let err = bad.parse::<PcrSelection>().unwrap_err();
            assert!(matches!(err, TpmError::BadPcrSelection { .. }), "{bad}");
        }
    }

    #[test]
    fn extended_value_matches_the_tpm_rule() {
        // PCR 16 starts at zero; extending with SHA-256("") is a known value.
        let event = Sha256::digest(b"");
        let value = extended_value(&[0; 32], &event);
        let mut expected = Sha256::new();
        expected.update([0u8; 32]);
        expected.update(event);
        assert_eq!(value, <[u8; 32]>::from(expected.finalize()));
    }

    #[test]
    fn policy_digests_match_tpm2_tools() {
        // `tpm2_createpolicy --policy-pcr -l sha256:7 -f zeros.bin` (swtpm, PCRs all zero).
        let pcr7 = PcrValues::from([(7, [0u8; 32])]);
        assert_eq!(
            hex::encode(policy_pcr_digest(&pcr7).unwrap()),
            "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b"
        );
        // The same for `-l sha256:7,11`.
        let both = PcrValues::from([(7, [0u8; 32]), (11, [0u8; 32])]);
        assert_eq!(
            hex::encode(policy_pcr_digest(&both).unwrap()),
            "384378caeddc9690b2ac9589827a756a5c46c8b33178b2fe468c80531b97a53e"
        );
        assert_eq!(
            pcr_values_digest(&pcr7),
            <[u8; 32]>::from(Sha256::digest([0u8; 32]))
        );
    }
}
