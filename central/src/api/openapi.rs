//! The OpenAPI document of the REST API, generated: the operations from each handler's
//! `#[utoipa::path]` (collected by the route list in [`super::routes`], so a route cannot be
//! missing from it), the schemas from cairn-api's types. Central serves it at
//! `/api/v1/openapi.json`; `central/openapi.json` is a committed copy for readers, kept equal by
//! a test.
//!
//! Two rules are applied to every operation here instead of in each handler: an error status
//! documented without a body gets the error body ([`ErrorBody`]), and an operation that needs
//! an API token gets its 401.

use std::sync::OnceLock;

use cairn_api::ErrorBody;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{KnownFormat, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

/// Name of the bearer-token security scheme.
const BEARER: &str = "bearer";

/// What the document says before the routes add their operations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cairn central operator API",
        version = "1",
        description = "Operators manage enrollment, devices, claims, apps, OS update bundles and \
            rollouts, sites and deployments, and watch events and logs. Authenticate with \
            `Authorization: Bearer <api token>`; roles: viewer < operator < admin. Every change \
            is written to the audit log. Every error answer carries `{\"error\": {\"code\", \
            \"message\"}}`. Clients should ignore answer fields and enum values they do not \
            know: newer centrals add them."
    ),
    servers((url = "https://127.0.0.1:7444", description = "central's default REST listener")),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "service", description = "Health, this document, Prometheus metrics and the web console"),
        (name = "enrollment", description = "Enrollment tokens and claims: what lets devices in"),
        (name = "devices", description = "The device registry and the calls that change a device"),
        (name = "apps", description = "Apps (Compose files) on one device"),
        (name = "access", description = "API tokens and the audit log"),
        (name = "bundles", description = "Signed OS update bundles"),
        (name = "rollouts", description = "OS update rollouts in waves"),
        (name = "sites", description = "Sites and regions"),
        (name = "deployments", description = "Apps central places on devices of selected sites"),
        (name = "secrets", description = "App secrets: values go in, and only the devices that run the app receive them; no answer carries a value"),
        (name = "variables", description = "Variables for Compose files: set for the fleet, a site or a deployment, merged with central's built-ins (CAIRN_SITE, ...) per app and device"),
        (name = "observability", description = "The event log and logs read from devices"),
    )
)]
struct ApiDoc;

/// Adds the bearer-token security scheme.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document without operations, for the route list to fill.
pub(super) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// The whole document.
pub fn document() -> OpenApi {
    let (_, mut document) = super::routes::router().split_for_parts();
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            add_unauthorized(operation);
            add_error_bodies(operation);
            describe_binary_bodies(operation);
        }
    }
    document
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut text =
            serde_json::to_string_pretty(&document()).expect("an OpenAPI document serialises");
        text.push('\n');
        text
    })
}

/// An operation that does not opt out of the global bearer requirement (`security(())`) can
/// answer 401.
fn add_unauthorized(operation: &mut Operation) {
    if operation.security.is_some() {
        return;
    }
    operation
        .responses
        .responses
        .entry("401".to_owned())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description("No `Authorization: Bearer` API token, or one central does not know (or revoked)")
                .into()
        });
}

/// Every 4xx and 5xx response documented without a body carries the error body.
fn add_error_bodies(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if status.starts_with(['4', '5']) && response.content.is_empty() {
            response.content.insert(
                "application/json".to_owned(),
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            );
        }
    }
}

/// Raw bytes (a bundle, a console file) are a binary string, not an array of numbers.
fn describe_binary_bodies(operation: &mut Operation) {
    let binary = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    };
    let contents = operation
        .request_body
        .iter_mut()
        .flat_map(|body| body.content.iter_mut())
        .chain(
            operation
                .responses
                .responses
                .values_mut()
                .filter_map(|r| match r {
                    RefOr::T(response) => Some(response),
                    RefOr::Ref(_) => None,
                })
                .flat_map(|response| response.content.iter_mut()),
        );
    for (media_type, content) in contents {
        if media_type == "application/octet-stream" {
            content.schema = Some(binary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set to rewrite `central/openapi.json` from the code instead of comparing.
    const UPDATE_ENV: &str = "CAIRN_UPDATE_OPENAPI";

    #[test]
    fn committed_openapi_json_is_the_generated_document() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = document_json();
        if std::env::var_os(UPDATE_ENV).is_some() {
            std::fs::write(&path, generated).expect("write central/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "central/openapi.json differs from the document generated from the routes and \
             cairn-api's types; regenerate it with \
             `{UPDATE_ENV}=1 cargo test -p cairn-central --lib committed_openapi_json` and commit it"
        );
    }

    #[test]
    fn every_operation_has_an_id_and_every_error_a_body() {
        let document: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let mut operations = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                assert!(
                    operation["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with(['4', '5']) {
                        assert!(
                            response["content"].is_object(),
                            "{method} {path} documents {status} without a body"
                        );
                    }
                }
            }
        }
        assert!(operations > 50, "only {operations} operations documented");
    }

    #[test]
    fn routes_are_added_only_with_their_documentation() {
        // A plain `.route(...)` would serve a path the document does not list; `routes!` adds
        // the handler's documented path and method together.
        for (file, source) in [
            ("routes.rs", include_str!("routes.rs")),
            ("console.rs", include_str!("console.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ] {
            for forbidden in [".route(", ".route_service(", ".nest("] {
                let code: String = source
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect();
                assert!(
                    !code.contains(forbidden),
                    "api/{file} calls {forbidden}: add routes with `.routes(routes!(handler))` \
                     so they are documented"
                );
            }
        }
    }
}
