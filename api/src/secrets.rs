//! App secrets (`/api/v1/secrets...`): values go in, never out. A secret belongs to a
//! deployment (one value for all its devices, or per site, or per device) or to an operator's
//! per-device app; only the devices that run the app receive its value, over their mTLS
//! stream. Every answer here describes secrets without their values.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// What a secret's value is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// A file of the services the Compose file grants it to (`/run/secrets/NAME`, or the
    /// long syntax's target), or an environment variable where the Compose file asks.
    #[default]
    File,
    /// A login for a private registry the app pulls its images from: a JSON object
    /// `{"registry", "username", "password", "ca_pem"}` (username and password together or
    /// not at all; `ca_pem` = extra certificate authorities for the registry's TLS).
    Registry,
}

impl SecretKind {
    /// The name used in the API and the database (`file`, `registry`).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::File => "file",
            SecretKind::Registry => "registry",
        }
    }

    /// The kind named `text` (see [`SecretKind::as_str`]).
    pub fn parse(text: &str) -> Option<SecretKind> {
        match text {
            "file" => Some(SecretKind::File),
            "registry" => Some(SecretKind::Registry),
            _ => None,
        }
    }
}

/// Body of `POST /api/v1/secrets`: one of `deployment` (optionally with `site` or `device`)
/// or `device` with `app`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSecret {
    /// Secret name, as the Compose file's top-level `secrets` declares it (1-64 letters,
    /// digits, '-', '_', '.').
    pub name: String,
    /// The deployment whose app uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// With `deployment`: the value for this site's devices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// With `deployment`: the value for this device only. With `app`: the device of the
    /// per-device app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// With `device` and no `deployment`: the per-device app that uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// What the value is for (`file` when left out). Every scope of one name has one kind.
    #[serde(default)]
    pub kind: SecretKind,
    /// The value, base64 (standard alphabet, padded); at most 32 KiB once decoded.
    pub value_base64: String,
}

/// Body of `PUT /api/v1/secrets/{id}`: a new value (a new version).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateSecret {
    /// The value, base64 (standard alphabet, padded); at most 32 KiB once decoded.
    pub value_base64: String,
}

/// The request bodies carry a value: their Debug says how long it is, never what it is.
macro_rules! debug_without_value {
    ($ty:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    .field("value_base64", &format_args!("<{} characters>", self.value_base64.len()))
                    .finish()
            }
        }
    };
}
debug_without_value!(CreateSecret, name, deployment, site, device, app, kind);
debug_without_value!(UpdateSecret,);

/// A secret as central describes it: where it applies and its version, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    /// Central's id of the secret (`sec_...`), for update and removal.
    pub id: String,
    /// Secret name.
    pub name: String,
    /// The app that uses it (the deployment's name for a deployment's secret).
    pub app: String,
    /// The deployment, for a deployment's secret.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub deployment: Option<String>,
    /// The site it is narrowed to.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub site: Option<String>,
    /// The device it is narrowed to (always set for a per-device app's secret).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub device: Option<String>,
    /// What the value is for.
    #[serde(default)]
    pub kind: SecretKind,
    /// Grows with every change of any secret; devices receive the value of this version.
    pub version: u64,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// Who set the current version.
    pub updated_by: String,
    /// When.
    pub updated_at: Timestamp,
}

/// Answer to `GET /api/v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretList {
    /// The secrets, by app, name and scope.
    pub secrets: Vec<SecretInfo>,
}

/// Query of `GET /api/v1/secrets`: filters, all optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
pub struct SecretQuery {
    /// Only this deployment's secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Only secrets narrowed to this device (and per-device apps' secrets of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only secrets of apps with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Only secrets with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Answer to creating or updating a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretReply {
    /// The secret, without its value.
    pub secret: SecretInfo,
    /// How many devices were sent a new desired state naming the new version.
    pub devices: u64,
}

/// A secret of an app on a device: the version central will release (no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppSecretVersion {
    /// Secret name.
    pub name: String,
    /// The version this device gets.
    pub version: u64,
    /// What the value is for.
    #[serde(default)]
    pub kind: SecretKind,
}
