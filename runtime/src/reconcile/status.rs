//! Desired apps, observed service status and the spec hash that decides "replace or keep".

use std::collections::BTreeMap;

use cairn_compose::{AppSpec, NetworkMode, RegistryLogin, ServiceSpec};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::health::Health;

/// An app as central wants it on this device: its spec and the values of its secrets. Its
/// `Debug` form names the secrets without their values, so no log line can show one.
#[derive(Clone, PartialEq)]
pub struct DesiredApp {
    /// The validated spec.
    pub spec: AppSpec,
    /// Secret values by name (every secret a service uses must be here).
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// How to reach the private registries the app's images come from (one per registry).
    pub registry_logins: Vec<RegistryLogin>,
    /// The key of the secret values' digests in the spec hash, which is a container label: an
    /// unkeyed digest would let anyone who reads the label test guesses of a weak value. The
    /// agent derives it from its TPM-sealed secrets key; all zero by default (tests).
    pub digest_key: [u8; 32],
}

impl DesiredApp {
    /// An app without secrets.
    pub fn new(spec: AppSpec) -> DesiredApp {
        DesiredApp {
            spec,
            secrets: BTreeMap::new(),
            registry_logins: Vec::new(),
            digest_key: [0; 32],
        }
    }
}

impl std::fmt::Debug for DesiredApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.secrets.keys().collect();
        f.debug_struct("DesiredApp")
            .field("spec", &self.spec)
            .field("secrets", &names)
            .field("registry_logins", &self.registry_logins)
            .finish()
    }
}

/// Observed state of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Not running yet: the image is being pulled, the container created, or it waits for its
    /// `depends_on` dependencies (the message says which and what for).
    Pending,
    /// The task runs (and is healthy or has no health check).
    Running,
    /// The task runs but its health check fails.
    Unhealthy,
    /// The task exited and will be restarted after the back-off.
    Restarting,
    /// The task exited and the restart policy keeps it down.
    Exited,
    /// The service cannot be started; see the message (also when a dependency failed so that
    /// it cannot reach its condition: `blocked by db: ...`).
    Failed,
}

/// What the reconciler reports for one desired service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// App name.
    pub app: String,
    /// Service name.
    pub service: String,
    /// State.
    pub state: ServiceState,
    /// Health-check result.
    pub health: Health,
    /// How many times the task was restarted.
    pub restarts: u32,
    /// Container id, when a container exists.
    pub container_id: Option<String>,
    /// Init pid of the running task.
    pub pid: Option<u32>,
    /// Exit status of the last exit, when exited.
    pub exit_code: Option<u32>,
    /// Why it is pending or failed, or the last health-check error.
    pub message: Option<String>,
}

impl ServiceStatus {
    pub(crate) fn new(app: &str, service: &str, state: ServiceState) -> ServiceStatus {
        ServiceStatus {
            app: app.into(),
            service: service.into(),
            state,
            health: Health::None,
            restarts: 0,
            container_id: None,
            pid: None,
            exit_code: None,
            message: None,
        }
    }

    pub(crate) fn with_message(mut self, message: impl Into<String>) -> ServiceStatus {
        self.message = Some(message.into());
        self
    }
}

#[derive(Serialize)]
struct HashInput<'a> {
    app: &'a str,
    service: &'a str,
    spec: &'a ServiceSpec,
    image_digest: &'a str,
    /// HMAC-SHA256 of the value of each secret the service uses under the app's
    /// [`DesiredApp::digest_key`], by name.
    secrets: BTreeMap<&'a str, String>,
    /// SHA-256 of the text of each config the service uses, by name: the texts are the app's
    /// (`AppSpec::configs`), not the service spec's. Absent without configs, so the hash of a
    /// service without them is what it was before configs existed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    configs: BTreeMap<&'a str, String>,
    /// How a service outside `network_mode: host` is networked, so containers made before app
    /// networks existed (a namespace without CNI) are replaced once; absent for host networking.
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'static str>,
    /// [`crate::container::CONFINEMENT_VERSION`]: a newer agent's confinement replaces
    /// containers an older one made.
    confinement: u32,
    /// Whether the app runs in a user namespace: decided for the whole app, so a service given
    /// devices (or the host's network) replaces every container of its app.
    userns: bool,
}

/// Hash of everything a service container is made from: app, service, spec, resolved image
/// digest and the hashes of the secret values and config texts it uses, so rotating a secret or
/// changing a config replaces only the services that use it. Equal hash = keep the container.
/// The secrets of `x-cairn-secret-env` are covered by the same digests: the parser (and
/// `SecretEnv::resolve` again) only lets a variable name a secret in the service's `secrets`.
/// The hash is a label of the container; no value is in it, only this digest of digests.
pub(crate) fn spec_hash(
    app: &DesiredApp,
    service: &str,
    spec: &ServiceSpec,
    image_digest: &str,
) -> String {
    let digest = |value: Option<&[u8]>| value.map(|v| hex::encode(Sha256::digest(v)));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &app.digest_key);
    let keyed = |value: Option<&[u8]>| value.map(|v| hex::encode(ring::hmac::sign(&key, v)));
    let secrets = spec
        .secrets
        .iter()
        .map(|secret| {
            let name = secret.source.as_str();
            let value = keyed(app.secrets.get(name).map(Vec::as_slice));
            (name, value.unwrap_or_default())
        })
        .collect();
    let configs = spec
        .configs
        .iter()
        .map(|config| {
            let name = config.source.as_str();
            let text = digest(app.spec.configs.get(name).map(String::as_bytes));
            (name, text.unwrap_or_default())
        })
        .collect();
    let input = HashInput {
        app: &app.spec.name,
        service,
        spec,
        image_digest,
        secrets,
        configs,
        network: (spec.network_mode == NetworkMode::Private).then_some("cni-bridge"),
        confinement: crate::container::CONFINEMENT_VERSION,
        userns: crate::userns::app_wants_userns(&app.spec),
    };
    let json = serde_json::to_vec(&input).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_spec_image_and_secrets_only() {
        let yaml = "services:\n  a: {image: x, secrets: [t]}\n  b: {image: y}\nsecrets: {t: {}}\n";
        let mut app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        app.secrets.insert("t".into(), b"1".to_vec());
        let a = app.spec.services["a"].clone();
        let h = spec_hash(&app, "a", &a, "sha256:1");
        assert_eq!(h, spec_hash(&app, "a", &a, "sha256:1"));
        assert_ne!(h, spec_hash(&app, "a", &a, "sha256:2"));
        let mut changed = a.clone();
        changed.environment.insert("X".into(), "1".into());
        assert_ne!(h, spec_hash(&app, "a", &changed, "sha256:1"));
        let b = app.spec.services["b"].clone();
        let hb = spec_hash(&app, "b", &b, "sha256:1");
        app.secrets.insert("t".into(), b"2".to_vec());
        assert_ne!(h, spec_hash(&app, "a", &a, "sha256:1"));
        assert_eq!(
            hb,
            spec_hash(&app, "b", &b, "sha256:1"),
            "b does not use the secret"
        );
    }

    #[test]
    fn the_secret_digests_are_keyed_per_device() {
        let yaml = "services:\n  a: {image: x, secrets: [t]}\nsecrets: {t: {}}\n";
        let mut app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        app.secrets.insert("t".into(), b"1234".to_vec());
        let a = app.spec.services["a"].clone();
        let zero_key = spec_hash(&app, "a", &a, "sha256:1");
        app.digest_key = [7; 32];
        let keyed = spec_hash(&app, "a", &a, "sha256:1");
        assert_ne!(zero_key, keyed, "another device's key gives another hash");
        assert_eq!(keyed, spec_hash(&app, "a", &a, "sha256:1"));
    }

    #[test]
    fn changing_a_config_replaces_only_the_services_that_use_it() {
        let yaml = "services:\n  a: {image: x, configs: [c]}\n  b: {image: y, secrets: [t]}\nsecrets: {t: {}}\nconfigs:\n  c: {content: one}\n";
        let mut app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        app.secrets.insert("t".into(), b"1".to_vec());
        let (a, b) = (
            app.spec.services["a"].clone(),
            app.spec.services["b"].clone(),
        );
        let hash = |app: &DesiredApp| {
            (
                spec_hash(app, "a", &a, "sha256:1"),
                spec_hash(app, "b", &b, "sha256:1"),
            )
        };
        let (ha, hb) = hash(&app);
        app.spec.configs.insert("c".into(), "two".into());
        let (ha2, hb2) = hash(&app);
        assert_ne!(ha, ha2, "a uses the config");
        assert_eq!(hb, hb2, "b does not");
        app.secrets.insert("t".into(), b"2".to_vec());
        let (ha3, hb3) = hash(&app);
        assert_eq!(ha2, ha3, "a does not use the secret");
        assert_ne!(hb2, hb3, "b does");
    }

    #[test]
    fn debug_output_names_secrets_without_their_values() {
        let yaml = "services:\n  a: {image: x, secrets: [token]}\nsecrets: {token: {}}\n";
        let mut app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        app.secrets.insert("token".into(), b"hunter2".to_vec());
        let debug = format!("{app:?} {app:#?}");
        assert!(debug.contains("\"token\""), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        // Nor as the bytes a derived Debug would print.
        assert!(!debug.contains("104, 117, 110"), "{debug}");
    }

    #[test]
    fn rotating_a_secret_in_the_environment_replaces_only_its_service_and_shows_no_value() {
        let yaml = "services:\n  a: {image: x, secrets: [t], x-cairn-secret-env: {TOKEN: t}}\n  b: {image: y, secrets: [u], x-cairn-secret-env: {U: u}}\n  c: {image: z}\nsecrets: {t: {}, u: {}}\n";
        let mut app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        app.secrets.insert("t".into(), b"hunter2".to_vec());
        app.secrets.insert("u".into(), b"swordfish".to_vec());
        let services = app.spec.services.clone();
        let hashes = |app: &DesiredApp| -> Vec<String> {
            services
                .iter()
                .map(|(name, spec)| spec_hash(app, name, spec, "sha256:1"))
                .collect()
        };
        let before = hashes(&app);
        app.secrets.insert("t".into(), b"hunter3".to_vec());
        let after = hashes(&app);
        assert_ne!(before[0], after[0], "a's variable changed");
        assert_eq!(before[1..], after[1..], "b and c do not use t");
        // Asking for the variable is itself a change of the spec.
        let mut without = services["a"].clone();
        without.secret_env.clear();
        assert_ne!(after[0], spec_hash(&app, "a", &without, "sha256:1"));
        let debug = format!("{app:?} {app:#?} {:?}", services["a"]);
        assert!(debug.contains("TOKEN"), "{debug}");
        for value in ["hunter", "swordfish"] {
            assert!(!debug.contains(value), "{debug}");
            assert!(!after.iter().any(|h| h.contains(value)));
        }
    }

    #[test]
    fn the_hash_of_a_service_without_configs_is_kept() {
        // Computed before configs existed: updating the agent must not replace containers
        // whose specs did not change.
        let yaml = "services:\n  a: {image: x}\n";
        let app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        let a = app.spec.services["a"].clone();
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("configs"), "{json}");
        // Nor secret variables, added later still.
        assert!(!json.contains("secret_env"), "{json}");
    }

    #[test]
    fn a_service_given_devices_or_the_hosts_network_changes_every_hash_of_its_app() {
        let yaml = "services:\n  a: {image: x}\n  b: {image: y}\n";
        let mut app = DesiredApp::new(AppSpec::parse("c.yml", "app", yaml).unwrap());
        let a = app.spec.services["a"].clone();
        let before = spec_hash(&app, "a", &a, "sha256:1");
        // b leaves the user namespace, so a, unchanged itself, must leave it too.
        let b = app.spec.services.get_mut("b").unwrap();
        b.network_mode = NetworkMode::Host;
        assert_ne!(before, spec_hash(&app, "a", &a, "sha256:1"));
        let b = app.spec.services.get_mut("b").unwrap();
        b.network_mode = NetworkMode::Private;
        assert_eq!(before, spec_hash(&app, "a", &a, "sha256:1"));
        let b = app.spec.services.get_mut("b").unwrap();
        b.devices.push(cairn_compose::DeviceMapping {
            host: "/dev/ttyUSB0".into(),
            container: "/dev/ttyUSB0".into(),
            permissions: "rw".into(),
        });
        assert_ne!(before, spec_hash(&app, "a", &a, "sha256:1"));
    }
}
