//! The device's identity on disk, checked against its key: the narrow handle for everything that
//! needs the certificate (the main loop, the Sync session, the updater's download).

use tracing::warn;

use crate::blocking::blocking;
use crate::certificate::CertificateInfo;
use crate::key::DeviceKey;
use crate::state::{StateDir, StateError, StoredIdentity};

/// The state directory and the device key, together: an identity is only usable with its key.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    state: StateDir,
    key: DeviceKey,
}

impl IdentityStore {
    /// The identity stored in `state` for `key`.
    pub fn new(state: StateDir, key: DeviceKey) -> IdentityStore {
        IdentityStore { state, key }
    }

    /// The device key.
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The stored identity if it is usable with the device key: certificate parses and carries
    /// the device key. A certificate for another key is moved aside so the device enrolls again.
    pub async fn load(&self) -> Result<Option<(StoredIdentity, CertificateInfo)>, StateError> {
        let state = self.state.clone();
        let Some(mut identity) = blocking(move || state.load_identity()).await? else {
            return Ok(None);
        };
        let info = match CertificateInfo::parse(&identity.cert_der).and_then(|info| {
            info.check_key(self.key.public_key_spki_der())
                .map(|()| info)
        }) {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, "stored device certificate unusable; moving it aside and enrolling again");
                let state = self.state.clone();
                blocking(move || state.discard_certificate()).await?;
                return Ok(None);
            }
        };
        if let Some(id) = &info.device_id {
            if identity.device_id.is_empty() {
                identity.device_id = id.clone();
            }
        }
        Ok(Some((identity, info)))
    }

    /// Stores a new identity (enrollment).
    pub async fn save(&self, identity: &StoredIdentity) -> Result<(), StateError> {
        let state = self.state.clone();
        let identity = identity.clone();
        blocking(move || state.save_identity(&identity)).await
    }

    /// Replaces the certificate (renewal).
    pub async fn save_certificate(&self, cert_der: &[u8]) -> Result<(), StateError> {
        let state = self.state.clone();
        let cert = cert_der.to_vec();
        blocking(move || state.save_certificate(&cert)).await
    }
}
