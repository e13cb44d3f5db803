//! The values of a service's `x-cairn-secret-env` variables: its secrets put into the container
//! process's environment, because the operator asked for each by name.
//!
//! The trade-off (why this is opt-in, and files on the run dir's tmpfs are the default):
//! containerd keeps the container's OCI spec, environment included, in its metadata database
//! under `/var/lib/containerd` (`/data/containerd`, the encrypted data partition) for as long as
//! the container exists, where host root can read it (`ctr containers info`); the container's
//! processes inherit the variable and can show it (`/proc/PID/environ`, crash reports), and so
//! do health checks, which exec with the container's environment. A rotation replaces the
//! container, so the old record and its value go with it.
//!
//! A value is put in only when it is valid UTF-8 without NUL bytes; otherwise creating the
//! container fails with [`ContainerError::SecretEnv`], which names the secret and the variable
//! but never shows the value. [`SecretEnv`]'s `Debug` names the variables only.

use std::collections::BTreeMap;

use cairn_compose::ServiceSpec;

use super::ContainerError;

/// Most bytes (`NAME=value` each) the secret variables of one service may add up to: far below
/// the kernel's limit on a process's arguments and environment (a quarter of the stack limit,
/// 2 MiB by default), so that the process still starts with its own variables and arguments.
pub const MAX_SECRET_ENV_BYTES: usize = 256 << 10;

/// Why a secret's value cannot be an environment variable. It says what is wrong with the
/// value without showing any of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretEnvProblem {
    /// The value is not valid UTF-8 (a binary key, say).
    #[error("is not valid UTF-8")]
    NotUtf8,
    /// The value holds a NUL byte, which ends a C string.
    #[error("holds a NUL byte, which no environment variable can")]
    Nul,
}

/// The secret variables of one service with their values, in name order. Its `Debug` form
/// names the variables and their secrets, never a value.
#[derive(Default)]
pub(crate) struct SecretEnv {
    vars: Vec<SecretVar>,
}

struct SecretVar {
    name: String,
    secret: String,
    value: String,
}

/// No secret variables, for tests that build specs.
#[cfg(test)]
pub(crate) static NONE: SecretEnv = SecretEnv { vars: Vec::new() };

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.vars.iter().map(|v| (&v.name, &v.secret)))
            .finish()
    }
}

impl SecretEnv {
    /// The variables of `spec.secret_env` (service `service` of `app`) with the values of their
    /// secrets in `secrets`. The parser's rules are asked again (a variable name, not also
    /// under `environment`, a secret granted in `spec.secrets`), so a spec that did not come
    /// through it still reads only the secrets it was given.
    ///
    /// # Errors
    /// [`ContainerError::MissingSecret`] when a secret has no value,
    /// [`ContainerError::SecretEnv`] when one is not valid UTF-8 or holds a NUL byte,
    /// [`ContainerError::SecretEnvTooLarge`] past [`MAX_SECRET_ENV_BYTES`], and
    /// [`ContainerError::Spec`] when a rule is broken. None shows a value.
    pub(crate) fn resolve(
        app: &str,
        service: &str,
        spec: &ServiceSpec,
        secrets: &BTreeMap<String, Vec<u8>>,
    ) -> Result<SecretEnv, ContainerError> {
        let mut vars = Vec::with_capacity(spec.secret_env.len());
        let mut bytes = 0;
        for (name, secret) in &spec.secret_env {
            check_rules(service, spec, name, secret)?;
            let value = secrets
                .get(secret)
                .ok_or_else(|| ContainerError::MissingSecret {
                    app: app.into(),
                    name: secret.clone(),
                })?;
            let problem = |problem| ContainerError::SecretEnv {
                app: app.into(),
                service: service.into(),
                variable: name.clone(),
                secret: secret.clone(),
                problem,
            };
            let value =
                std::str::from_utf8(value).map_err(|_| problem(SecretEnvProblem::NotUtf8))?;
            if value.contains('\0') {
                return Err(problem(SecretEnvProblem::Nul));
            }
            bytes += name.len() + 1 + value.len();
            vars.push(SecretVar {
                name: name.clone(),
                secret: secret.clone(),
                value: value.to_string(),
            });
        }
        if bytes > MAX_SECRET_ENV_BYTES {
            return Err(ContainerError::SecretEnvTooLarge {
                app: app.into(),
                service: service.into(),
                bytes,
            });
        }
        Ok(SecretEnv { vars })
    }

    /// Each variable's name and value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
    }
}

/// The parser's rules for variable `name` of `service` naming `secret`.
fn check_rules(
    service: &str,
    spec: &ServiceSpec,
    name: &str,
    secret: &str,
) -> Result<(), ContainerError> {
    let reason = if !cairn_compose::is_env_name(name) {
        format!("x-cairn-secret-env of service {service}: {name:?} is not a variable name")
    } else if spec.environment.contains_key(name) {
        format!(
            "x-cairn-secret-env of service {service}: {name} is also under `environment`; keep one"
        )
    } else if !spec.secrets.iter().any(|m| m.source == secret) {
        format!("x-cairn-secret-env of service {service}: secret {secret:?} is not granted to the service; add it to its `secrets`")
    } else {
        return Ok(());
    };
    Err(ContainerError::Spec { reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_compose::AppSpec;

    const APP: &str = "services:\n  web:\n    image: x\n    secrets: [token, key]\n    environment: {MODE: edge}\n    x-cairn-secret-env: {TOKEN: token, KEY: key}\nsecrets: {token: {}, key: {}}\n";

    fn web() -> ServiceSpec {
        AppSpec::parse("c.yml", "app", APP).unwrap().services["web"].clone()
    }

    fn secrets(token: &[u8]) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("token".to_string(), token.to_vec()),
            ("key".to_string(), b"k3y".to_vec()),
        ])
    }

    #[test]
    fn resolves_each_variable_to_its_secrets_value() {
        let env = SecretEnv::resolve("app", "web", &web(), &secrets(b"hunter2")).unwrap();
        let vars: Vec<_> = env.iter().collect();
        assert_eq!(vars, [("KEY", "k3y"), ("TOKEN", "hunter2")]);
        let debug = format!("{env:?} {env:#?}");
        assert!(
            debug.contains("TOKEN") && debug.contains("token"),
            "{debug}"
        );
        assert!(
            !debug.contains("hunter2") && !debug.contains("k3y"),
            "{debug}"
        );
    }

    #[test]
    fn a_value_that_is_not_text_is_refused_naming_the_secret_only() {
        for (value, what) in [
            (&b"hunter\xff2"[..], "is not valid UTF-8"),
            (&b"hunter\x002"[..], "holds a NUL byte"),
        ] {
            let err = SecretEnv::resolve("app", "web", &web(), &secrets(value)).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ContainerError::SecretEnv { .. }), "{err:?}");
            assert!(message.contains("secret token"), "{message}");
            assert!(
                message.contains("variable TOKEN of service web"),
                "{message}"
            );
            assert!(message.contains(what), "{message}");
            let debug = format!("{message} {err:?}");
            assert!(!debug.contains("hunter"), "{debug}");
        }
    }

    #[test]
    fn a_missing_value_is_a_missing_secret() {
        let mut values = secrets(b"x");
        values.remove("key");
        let err = SecretEnv::resolve("app", "web", &web(), &values).unwrap_err();
        assert!(
            matches!(&err, ContainerError::MissingSecret { name, .. } if name == "key"),
            "{err:?}"
        );
    }

    #[test]
    fn too_many_bytes_are_refused() {
        let big = vec![b'a'; MAX_SECRET_ENV_BYTES];
        let err = SecretEnv::resolve("app", "web", &web(), &secrets(&big)).unwrap_err();
        assert!(
            matches!(err, ContainerError::SecretEnvTooLarge { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("service web"), "{err}");
    }

    #[test]
    fn the_parsers_rules_are_asked_again() {
        let base = web();
        let mut ungranted = base.clone();
        ungranted.secrets.retain(|m| m.source != "key");
        let mut in_environment = base.clone();
        in_environment
            .environment
            .insert("TOKEN".into(), "x".into());
        let mut bad_name = base.clone();
        bad_name.secret_env.insert("A=B".into(), "token".into());
        for (spec, what) in [
            (ungranted, "secret \"key\" is not granted"),
            (in_environment, "TOKEN is also under `environment`"),
            (bad_name, "\"A=B\" is not a variable name"),
        ] {
            let err = SecretEnv::resolve("app", "web", &spec, &secrets(b"x")).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn a_service_without_secret_variables_needs_no_secrets() {
        let spec = AppSpec::parse("c.yml", "app", "services: {web: {image: x}}")
            .unwrap()
            .services["web"]
            .clone();
        let env = SecretEnv::resolve("app", "web", &spec, &BTreeMap::new()).unwrap();
        assert_eq!(env.iter().count(), 0);
    }
}
