//! `x-cairn-secret-env`: secrets put into a service's environment by explicit reference, and
//! every refusal with the service, the variable and its line.

use std::collections::BTreeMap;

use super::super::*;
use super::assert_error;

/// Service `web` (line 2) granted secret `token`, with `lines` after its `secrets` (from line
/// 5), and top-level `secrets: {token: {}, other: {}}`.
fn file(lines: &str) -> String {
    format!("services:\n  web:\n    image: busybox\n    secrets: [token]\n{lines}secrets:\n  token: {{}}\n  other: {{}}\n")
}

fn web(lines: &str) -> ServiceSpec {
    match AppSpec::parse("compose.yml", "shop", &file(lines)) {
        Ok(mut app) => app.services.remove("web").unwrap(),
        Err(e) => panic!("expected a valid file, got:\n{e}"),
    }
}

#[test]
fn variables_name_secrets_granted_to_the_service() {
    let web = web("    x-cairn-secret-env:\n      API_TOKEN: token\n      _Token2: token\n");
    assert_eq!(
        web.secret_env,
        BTreeMap::from([
            ("API_TOKEN".to_string(), "token".to_string()),
            ("_Token2".to_string(), "token".to_string()),
        ])
    );
    // The secret's file is still mounted: the variable comes on top of it.
    assert_eq!(web.secrets[0].target, "/run/secrets/token");
    assert!(web.environment.is_empty());
}

#[test]
fn the_long_syntax_grants_a_secret_too() {
    let text = "services:\n  web:\n    image: busybox\n    secrets:\n      - source: token\n        target: /etc/app/token\n    x-cairn-secret-env: {TOKEN: token}\nsecrets:\n  token: {}\n";
    let app = AppSpec::parse("compose.yml", "shop", text).unwrap();
    assert_eq!(app.services["web"].secret_env["TOKEN"], "token");
}

#[test]
fn a_service_without_the_extension_has_no_secret_variables() {
    // The runtime's spec hash tests check that it then serializes as before.
    assert!(web("").secret_env.is_empty());
}

#[test]
fn merge_keys_carry_the_extension() {
    let text = "x-secret-env: &env\n  x-cairn-secret-env:\n    TOKEN: token\nservices:\n  web:\n    <<: *env\n    image: busybox\n    secrets: [token]\nsecrets:\n  token: {}\n";
    let app = AppSpec::parse("compose.yml", "shop", text).unwrap();
    assert_eq!(app.services["web"].secret_env["TOKEN"], "token");
}

#[test]
fn a_secret_not_declared_at_top_level_is_refused() {
    assert_error(
        &file("    x-cairn-secret-env:\n      DB: db_password\n"),
        "compose.yml:6: services.web.x-cairn-secret-env.DB: secret \"db_password\" is not declared in the top-level `secrets`; declare it there",
    );
}

#[test]
fn a_secret_not_granted_to_the_service_is_refused() {
    // `other` is declared, but only `token` is in web's `secrets`.
    assert_error(
        &file("    x-cairn-secret-env:\n      OTHER: other\n"),
        "compose.yml:6: services.web.x-cairn-secret-env.OTHER: secret \"other\" is not granted to this service; add it to the service's `secrets`",
    );
    // Granted to another service is not granted to this one.
    let text = "services:\n  web:\n    image: busybox\n    x-cairn-secret-env: {T: token}\n  db:\n    image: busybox\n    secrets: [token]\nsecrets:\n  token: {}\n";
    assert_error(
        text,
        "compose.yml:4: services.web.x-cairn-secret-env.T: secret \"token\" is not granted to this service",
    );
}

#[test]
fn a_variable_also_under_environment_is_refused() {
    let lines =
        "    environment:\n      TOKEN: plain\n    x-cairn-secret-env:\n      TOKEN: token\n";
    assert_error(
        &file(lines),
        "compose.yml:8: services.web.x-cairn-secret-env.TOKEN: TOKEN is also set under `environment`; a variable has one source",
    );
    // The list form of `environment` counts too.
    let lines = "    environment: [\"TOKEN=plain\"]\n    x-cairn-secret-env: {TOKEN: token}\n";
    assert_error(
        &file(lines),
        "services.web.x-cairn-secret-env.TOKEN: TOKEN is also set under `environment`",
    );
}

#[test]
fn names_that_are_not_variable_names_are_refused() {
    for name in [
        "1ST",
        "DB-PASSWORD",
        "A.B",
        "\"WITH SPACE\"",
        "\"\"",
        "ÄPFEL",
    ] {
        let lines = format!("    x-cairn-secret-env:\n      {name}: token\n");
        assert_error(&file(&lines), "is not a usable variable name; use up to 128 letters, digits and '_', not starting with a digit");
    }
    let long = "A".repeat(MAX_SECRET_ENV_NAME_LEN + 1);
    let lines = format!("    x-cairn-secret-env:\n      {long}: token\n");
    assert_error(&file(&lines), "is not a usable variable name");
    let longest = "A".repeat(MAX_SECRET_ENV_NAME_LEN);
    let lines = format!("    x-cairn-secret-env:\n      {longest}: token\n");
    assert_eq!(web(&lines).secret_env[&longest], "token");
}

#[test]
fn values_must_name_a_secret() {
    assert_error(
        &file("    x-cairn-secret-env:\n      TOKEN:\n"),
        "compose.yml:6: services.web.x-cairn-secret-env.TOKEN: is empty; give the name of a secret granted to the service",
    );
    assert_error(
        &file("    x-cairn-secret-env:\n      TOKEN: [token]\n"),
        "services.web.x-cairn-secret-env.TOKEN: must be the name of a secret granted to the service, found a list",
    );
    assert_error(
        &file("    x-cairn-secret-env: [\"TOKEN=token\"]\n"),
        "compose.yml:5: services.web.x-cairn-secret-env: must be a mapping, found a list",
    );
    assert_error(
        &file("    x-cairn-secret-env:\n      TOKEN: token\n      TOKEN: token\n"),
        "compose.yml:7: services.web.x-cairn-secret-env.TOKEN: is given twice; keep one",
    );
}

#[test]
fn at_most_64_variables() {
    let entries = |n: usize| {
        (0..n)
            .map(|i| format!("      V{i}: token\n"))
            .collect::<String>()
    };
    let lines = format!("    x-cairn-secret-env:\n{}", entries(MAX_SECRET_ENV));
    assert_eq!(web(&lines).secret_env.len(), MAX_SECRET_ENV);
    let lines = format!("    x-cairn-secret-env:\n{}", entries(MAX_SECRET_ENV + 1));
    assert_error(
        &file(&lines),
        "compose.yml:6: services.web.x-cairn-secret-env: has 65 variables; at most 64 are allowed",
    );
}

#[test]
fn variables_are_not_put_into_the_extension() {
    // `x-` values are left as written, so `${NAME}` is not a secret name.
    let mut variables = BTreeMap::new();
    variables.insert("NAME".to_string(), "token".to_string());
    let text = file("    x-cairn-secret-env:\n      TOKEN: ${NAME}\n");
    let err = AppSpec::parse_with_variables("compose.yml", "shop", &text, &variables)
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret \"${NAME}\" is not declared"), "{err}");
}

#[test]
fn other_cairn_extensions_are_refused_and_other_extensions_ignored() {
    assert_error(
        &file("    x-cairn-secret-environment:\n      TOKEN: token\n"),
        "compose.yml:5: services.web.x-cairn-secret-environment: unknown Cairn extension \"x-cairn-secret-environment\" (keys starting \"x-cairn-\" are Cairn's own); supported here: x-cairn-secret-env",
    );
    assert_error(
        "x-cairn-defaults: {}\nservices:\n  web: {image: busybox}\n",
        "compose.yml:1: x-cairn-defaults: unknown Cairn extension \"x-cairn-defaults\" (keys starting \"x-cairn-\" are Cairn's own); none are supported here",
    );
    let web = web("    x-other-tool:\n      TOKEN: token\n");
    assert!(web.secret_env.is_empty());
}

#[test]
fn problems_in_several_services_are_all_reported() {
    let text = "services:\n  web:\n    image: busybox\n    x-cairn-secret-env: {A: nope}\n  db:\n    image: busybox\n    environment: {B: x}\n    secrets: [token]\n    x-cairn-secret-env: {B: token}\nsecrets:\n  token: {}\n";
    let err = AppSpec::parse("compose.yml", "shop", text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compose.yml:4: services.web.x-cairn-secret-env.A"),
        "{err}"
    );
    assert!(
        err.contains("compose.yml:9: services.db.x-cairn-secret-env.B"),
        "{err}"
    );
}
