//! `x-cairn-secret-env`: the explicit reference that puts a secret's value into a service's
//! environment.
//!
//! A secret reaches a container as a read-only file on a tmpfs; it is in the environment only
//! when the operator asks for it here, variable by variable:
//!
//! ```yaml
//! services:
//!   web:
//!     image: registry:5000/web:1.0
//!     secrets: [db_password]
//!     x-cairn-secret-env:
//!       DB_PASSWORD: db_password
//! secrets:
//!   db_password: {}
//! ```
//!
//! Each key is a variable name (letters, digits and `_`, not starting with a digit) that is not
//! also under `environment`; each value is the name of a secret declared at top level *and*
//! granted to the service in its `secrets` (so a service reads only the secrets it is given,
//! and the secret's file is there too). At most [`MAX_SECRET_ENV`] variables. Variables are not
//! put into these keys or values (an `x-` key's values are left as written).
//!
//! The trade-off, and why it is opt-in: containerd keeps a container's OCI spec, environment
//! included, in its metadata database on the (encrypted) data partition for as long as the
//! container exists, and every process of the container (and anything it runs) inherits and
//! can print the variable. A file on the tmpfs is in neither place.

use std::collections::{BTreeMap, BTreeSet};

use super::parse::{join, Checker};
use super::yaml::Node;
use super::ServiceSpec;

/// The service key of the extension.
pub const SECRET_ENV_KEY: &str = "x-cairn-secret-env";

/// Most `x-cairn-secret-env` variables of one service.
pub const MAX_SECRET_ENV: usize = 64;

/// Longest variable name in `x-cairn-secret-env`.
pub const MAX_SECRET_ENV_NAME_LEN: usize = 128;

/// Why an entry of a service's `x-cairn-secret-env` is refused. Every message names the
/// variable or the secret, never a value (the file holds none: values come from central).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretEnvError {
    /// A key that is not a portable environment variable name.
    #[error("{name:?} is not a usable variable name; use up to {MAX_SECRET_ENV_NAME_LEN} letters, digits and '_', not starting with a digit (e.g. DB_PASSWORD)")]
    Name {
        /// The key as written.
        name: String,
    },
    /// The variable is also set under the service's `environment`.
    #[error("{name} is also set under `environment`; a variable has one source, so remove it from `environment` or from `x-cairn-secret-env`")]
    AlsoInEnvironment {
        /// The variable.
        name: String,
    },
    /// The secret is not declared in the top-level `secrets`.
    #[error("secret {secret:?} is not declared in the top-level `secrets`; declare it there (`{secret}: {{}}`) and add it to this service's `secrets`")]
    Undeclared {
        /// The secret named.
        secret: String,
    },
    /// The secret is declared but not in the service's `secrets`.
    #[error("secret {secret:?} is not granted to this service; add it to the service's `secrets` (a service reads only the secrets it is given)")]
    NotGranted {
        /// The secret named.
        secret: String,
    },
    /// More variables than [`MAX_SECRET_ENV`].
    #[error("has {count} variables; at most {MAX_SECRET_ENV} are allowed, read the others from their files under /run/secrets")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// Whether `name` is a portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_SECRET_ENV_NAME_LEN`] characters.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && name.len() <= MAX_SECRET_ENV_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Check one entry, variable `name` to secret `secret`, of service `svc` (whose `environment`
/// and `secrets` are read already) in an app declaring `declared`.
fn check_entry(
    name: &str,
    secret: &str,
    svc: &ServiceSpec,
    declared: &BTreeSet<String>,
) -> Result<(), SecretEnvError> {
    if !is_env_name(name) {
        return Err(SecretEnvError::Name { name: name.into() });
    }
    if svc.environment.contains_key(name) {
        return Err(SecretEnvError::AlsoInEnvironment { name: name.into() });
    }
    if !declared.contains(secret) {
        return Err(SecretEnvError::Undeclared {
            secret: secret.into(),
        });
    }
    if !svc.secrets.iter().any(|m| m.source == secret) {
        return Err(SecretEnvError::NotGranted {
            secret: secret.into(),
        });
    }
    Ok(())
}

/// A service's `x-cairn-secret-env` at `node`: variable name to secret name. `svc` must hold
/// the service's `environment` and `secrets` already; `declared` are the app's secrets.
pub(super) fn secret_env(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    svc: &ServiceSpec,
    declared: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(entries) = ck.map(node, path, None) else {
        return out;
    };
    if entries.len() > MAX_SECRET_ENV {
        let error = SecretEnvError::TooMany {
            count: entries.len(),
        };
        ck.problem(node, path, error.to_string());
        return out;
    }
    for (name, value) in entries {
        let p = join(path, name);
        let what = "the name of a secret granted to the service";
        let Some(secret) = ck.scalar(value, &p, what) else {
            continue;
        };
        match check_entry(name, secret, svc, declared) {
            Ok(()) => {
                out.insert(name.to_string(), secret.to_string());
            }
            Err(error) => ck.problem(value, &p, error.to_string()),
        }
    }
    out
}
