//! How to reach a private registry: the value of a secret of kind `registry`. Central checks it
//! when the operator stores it; the device reads it again before it pulls an app's images.
//!
//! The value is a JSON object:
//!
//! ```json
//! {"registry": "registry.example.com:5000", "username": "puller", "password": "…",
//!  "ca_pem": "-----BEGIN CERTIFICATE-----\n…"}
//! ```
//!
//! `registry` is a registry host as image references name it (`host[:port]`, `docker.io` for
//! Docker Hub); `username` and `password` go together or not at all; `ca_pem` holds extra
//! certificate authorities (PEM) trusted for this registry's TLS besides the system's roots.
//! A registry with a login is always spoken to over HTTPS.

use serde::Deserialize;

use crate::ImageRef;

/// Longest user name.
pub const MAX_REGISTRY_USERNAME: usize = 256;
/// Longest password or access token.
pub const MAX_REGISTRY_PASSWORD: usize = 4096;
/// Most certificate authorities in `ca_pem`.
pub const MAX_REGISTRY_CAS: usize = 16;

/// A registry login. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    /// The registry host, as image references name it (e.g. `registry.example.com:5000`).
    pub registry: String,
    /// User name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or access token (with `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// Extra certificate authorities for the registry's TLS, PEM.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
    }
}

/// Why a value is not a registry login. Never repeats the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RegistryLoginError(String);

impl RegistryLogin {
    /// Parse and check a secret's value.
    ///
    /// # Errors
    /// [`RegistryLoginError`] saying which field is wrong and how it should look.
    pub fn parse(value: &[u8]) -> Result<RegistryLogin, RegistryLoginError> {
        let err = |s: String| RegistryLoginError(s);
        let login: RegistryLogin = serde_json::from_slice(value).map_err(|e| {
            // serde_json's message names fields and positions, never string contents.
            err(format!(
                "a registry secret is a JSON object {{\"registry\", \"username\", \"password\", \"ca_pem\"}}: {e}"
            ))
        })?;
        let probe = ImageRef::parse(&format!("{}/probe", login.registry))
            .ok()
            .filter(|r| r.registry == login.registry && !login.registry.is_empty());
        if probe.is_none() {
            return Err(err(format!(
                "`registry` {:?} is not a registry host; give it as image references name it, e.g. \"registry.example.com:5000\"",
                login.registry
            )));
        }
        match (&login.username, &login.password) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(err(
                    "give `username` and `password` together, or neither (a registry that needs only a CA)".into(),
                ))
            }
            (Some(user), Some(password)) => {
                if user.is_empty() || user.len() > MAX_REGISTRY_USERNAME || user.contains(':') {
                    return Err(err(format!(
                        "`username` must be 1-{MAX_REGISTRY_USERNAME} characters without ':'"
                    )));
                }
                if password.is_empty() || password.len() > MAX_REGISTRY_PASSWORD {
                    return Err(err(format!(
                        "`password` must be 1-{MAX_REGISTRY_PASSWORD} bytes"
                    )));
                }
                if user.chars().chain(password.chars()).any(char::is_control) {
                    return Err(err(
                        "`username` and `password` must not hold control characters".into(),
                    ));
                }
            }
            (None, None) if login.ca_pem.is_none() => {
                return Err(err(
                    "the login gives neither `username`/`password` nor `ca_pem`: nothing to use"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(pem) = &login.ca_pem {
            let count = pem.matches("-----BEGIN CERTIFICATE-----").count();
            if count == 0 || count != pem.matches("-----END CERTIFICATE-----").count() {
                return Err(err(
                    "`ca_pem` must hold PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)".into(),
                ));
            }
            if count > MAX_REGISTRY_CAS {
                return Err(err(format!(
                    "`ca_pem` holds {count} certificates; at most {MAX_REGISTRY_CAS}"
                )));
            }
        }
        Ok(login)
    }

    /// The JSON value to store (what [`RegistryLogin::parse`] reads).
    pub fn to_json(&self) -> Vec<u8> {
        let mut object = serde_json::Map::new();
        object.insert("registry".into(), self.registry.clone().into());
        let fields = [
            ("username", &self.username),
            ("password", &self.password),
            ("ca_pem", &self.ca_pem),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                object.insert(key.into(), value.clone().into());
            }
        }
        serde_json::Value::Object(object).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn login(user: Option<&str>, password: Option<&str>, ca: Option<&str>) -> RegistryLogin {
        RegistryLogin {
            registry: "registry.example.com:5000".into(),
            username: user.map(Into::into),
            password: password.map(Into::into),
            ca_pem: ca.map(Into::into),
        }
    }

    #[test]
    fn round_trips_and_hides_the_password() {
        for l in [
            login(Some("bob"), Some("hunter2-secret"), None),
            login(None, None, Some(CA)),
            login(Some("bob"), Some("hunter2-secret"), Some(CA)),
        ] {
            assert_eq!(RegistryLogin::parse(&l.to_json()).unwrap(), l);
            assert!(!format!("{l:?}").contains("hunter2"));
        }
    }

    #[test]
    fn refuses_bad_values_without_repeating_them() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json hunter2".to_vec(), "JSON object"),
            (
                br#"{"registry":"x.io","username":"u","password":"hunter2","extra":1}"#.to_vec(),
                "unknown field",
            ),
            (
                br#"{"registry":"x.io/path","username":"u","password":"hunter2"}"#.to_vec(),
                "not a registry host",
            ),
            (
                br#"{"registry":"","username":"u","password":"hunter2"}"#.to_vec(),
                "not a registry host",
            ),
            (
                br#"{"registry":"library","username":"u","password":"hunter2"}"#.to_vec(),
                "not a registry host",
            ),
            (
                br#"{"registry":"x.io","username":"u"}"#.to_vec(),
                "together",
            ),
            (
                br#"{"registry":"x.io","password":"hunter2"}"#.to_vec(),
                "together",
            ),
            (br#"{"registry":"x.io"}"#.to_vec(), "nothing to use"),
            (
                br#"{"registry":"x.io","username":"a:b","password":"hunter2"}"#.to_vec(),
                "without ':'",
            ),
            (
                br#"{"registry":"x.io","username":"u","password":"hunter2\n"}"#.to_vec(),
                "control",
            ),
            (
                br#"{"registry":"x.io","ca_pem":"hunter2"}"#.to_vec(),
                "PEM certificates",
            ),
        ];
        for (value, expected) in cases {
            let e = RegistryLogin::parse(&value).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
            assert!(!e.contains("hunter2"), "the error repeats the value: {e}");
        }
        let many = format!(
            r#"{{"registry":"x.io","ca_pem":{}}}"#,
            serde_json::Value::from(CA.repeat(MAX_REGISTRY_CAS + 1))
        );
        assert!(RegistryLogin::parse(many.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }
}
