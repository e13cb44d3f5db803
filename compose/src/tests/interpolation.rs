//! Variable interpolation: the Compose forms, where it applies, and its budgets.

use std::collections::BTreeMap;

use super::super::interpolate::{self, InterpolationError};
use super::super::*;
use super::web_file;

fn variables(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str, pairs: &[(&str, &str)]) -> Result<AppSpec, String> {
    AppSpec::parse_with_variables("compose.yml", "shop", text, &variables(pairs))
        .map_err(|e| e.to_string())
}

#[test]
fn every_form_of_interpolation_follows_compose() {
    let vars = variables(&[("TAG", "1.2"), ("EMPTY", ""), ("_x1", "y")]);
    let text = |t: &str| interpolate::text(t, &vars);
    for (input, output) in [
        ("web:${TAG}", "web:1.2"),
        ("web:$TAG!", "web:1.2!"),
        ("$_x1$TAG", "y1.2"),
        ("${MISSING:-3.0}", "3.0"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY-fallback}", ""),
        ("${MISSING-fallback}", "fallback"),
        ("${TAG:?needed}", "1.2"),
        ("${EMPTY?needed}", ""),
        ("${TAG:+set}", "set"),
        ("${EMPTY:+set}", ""),
        ("${EMPTY+set}", "set"),
        ("${MISSING+set}", ""),
        ("cost: $$5 and $${TAG}", "cost: $5 and ${TAG}"),
        ("${MISSING:-${TAG}-rc}", "1.2-rc"),
        ("${MISSING:-{braces}}", "{braces}"),
        ("${MISSING:-}", ""),
        ("no variables", "no variables"),
        ("ünïcode ${TAG} ✓", "ünïcode 1.2 ✓"),
    ] {
        assert_eq!(text(input).as_deref(), Ok(output), "{input}");
    }
    let unset = |name: &str| Err(InterpolationError::Unset { name: name.into() });
    assert_eq!(text("${MISSING}"), unset("MISSING"));
    assert_eq!(text("$MISSING"), unset("MISSING"));
    assert_eq!(text("${MISSING:-${ALSO}}"), unset("ALSO"));
    assert_eq!(text("${MISSING?}"), unset("MISSING"));
    assert_eq!(
        text("${MISSING?give the tag}"),
        Err(InterpolationError::Required {
            name: "MISSING".into(),
            message: "give the tag".into()
        })
    );
    assert_eq!(
        text("${EMPTY:?must not be empty}"),
        Err(InterpolationError::Empty {
            name: "EMPTY".into(),
            message: "must not be empty".into()
        })
    );
    for bad in [
        "$",
        "a $ b",
        "$1",
        "${}",
        "${1A}",
        "${TAG:}",
        "${TAG/x}",
        "${TAG:=x}",
    ] {
        assert!(
            matches!(text(bad), Err(InterpolationError::Syntax { .. })),
            "{bad}: {:?}",
            text(bad)
        );
    }
    assert!(matches!(
        text("${TAG"),
        Err(InterpolationError::Unclosed { .. })
    ));
}

#[test]
fn an_unset_variable_is_a_problem_at_its_line_and_never_an_empty_string() {
    let text = web_file("    environment:\n      MODE: ${MODE}\n      LEVEL: $LEVEL\n");
    let got = parse(&text, &[]).unwrap_err();
    assert!(
        got.contains("compose.yml:5: services.web.environment.MODE: variable MODE is not set on this device; set it with `cairnctl variable set MODE VALUE` and --fleet, --site SITE or --deployment NAME, or give a default: ${MODE:-value}"),
        "{got}"
    );
    assert!(
        got.contains("compose.yml:6: services.web.environment.LEVEL: variable LEVEL is not set"),
        "{got}"
    );
    // `parse` is `parse_with_variables` with none.
    let got = AppSpec::parse("compose.yml", "shop", &text)
        .unwrap_err()
        .to_string();
    assert!(got.contains("variable MODE is not set"), "{got}");
    let app = parse(&text, &[("MODE", "edge"), ("LEVEL", "")]).unwrap();
    assert_eq!(app.services["web"].environment["MODE"], "edge");
    assert_eq!(app.services["web"].environment["LEVEL"], "");
}

#[test]
fn variables_fill_values_of_every_kind() {
    let text = "services:\n  web:\n    image: registry:5000/web:${TAG:-latest}\n    command: [\"echo\", \"$$HOME\", \"${GREETING}\"]\n    ports: [\"${PORT}:80\"]\n    read_only: ${RO:-false}\n    deploy: {resources: {limits: {memory: \"${MEM}\"}}}\n";
    let app = parse(
        text,
        &[
            ("TAG", "2.0"),
            ("GREETING", "hi $USER"),
            ("PORT", "8080"),
            ("MEM", "64m"),
        ],
    )
    .unwrap();
    let web = &app.services["web"];
    assert_eq!(web.image, "registry:5000/web:2.0");
    // `$$` is a literal `$`; a variable's value is put in as it is, never interpolated again.
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["echo", "$HOME", "hi $USER"]
    );
    assert_eq!(web.ports[0].host_port, 8080);
    assert!(!web.read_only);
    assert_eq!(web.limits.memory_bytes, Some(64 << 20));
}

#[test]
fn keys_and_extension_fields_are_not_interpolated() {
    let text = "x-defaults: &defaults\n  environment:\n    FROM_ANCHOR: ${ANCHORED}\nx-unused: ${NEVER_SET}\nservices:\n  web:\n    <<: *defaults\n    image: busybox\n    x-note: ${ALSO_NEVER_SET}\n    labels:\n      ${KEY}: value\n      x-team: ${TEAM}\n  x-web:\n    image: busybox:${TAG}\n";
    let app = parse(text, &[("ANCHORED", "a"), ("TEAM", "t"), ("TAG", "1")]).unwrap();
    let web = &app.services["web"];
    // The merged copy of an anchor is interpolated where it is used.
    assert_eq!(web.environment["FROM_ANCHOR"], "a");
    assert_eq!(web.labels["${KEY}"], "value");
    // In mappings of names, an `x-` key is a name like any other.
    assert_eq!(web.labels["x-team"], "t");
    assert_eq!(app.services["x-web"].image, "busybox:1");
}

#[test]
fn a_failed_value_reports_only_the_interpolation_problem() {
    let text = web_file("    ports: [\"${PORT}:80\"]\n    restart: sometimes\n");
    let got = parse(&text, &[]).unwrap_err();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(
        lines[0].starts_with("compose.yml:4: services.web.ports[0]: variable PORT is not set"),
        "{got}"
    );
    assert!(
        lines[1].starts_with("compose.yml:5: services.web.restart"),
        "{got}"
    );
    let got = parse(&web_file("    command: echo 5$\n"), &[]).unwrap_err();
    assert!(
        got.contains("compose.yml:4: services.web.command: \"$\" is not a variable reference: write ${VAR} or $VAR, and $$ for a literal '$'"),
        "{got}"
    );
}

#[test]
fn interpolated_values_are_bounded() {
    let big = "x".repeat(40 << 10);
    let got = parse(
        &web_file("    environment: {A: \"${BIG}${BIG}\"}\n"),
        &[("BIG", &big)],
    )
    .unwrap_err();
    assert!(
        got.contains(
            "services.web.environment.A: the value is longer than 64 KiB once variables are put in"
        ),
        "{got}"
    );
    // 40 values of 40 KiB each pass 1 MiB in all.
    let env: String = (0..40).map(|i| format!("      V{i}: ${{BIG}}\n")).collect();
    let got = parse(
        &web_file(&format!("    environment:\n{env}")),
        &[("BIG", &big)],
    )
    .unwrap_err();
    assert!(
        got.contains("the interpolated values of the file add up to more than 1 MiB"),
        "{got}"
    );
    let nested = format!("{}x{}", "${A:-".repeat(9), "}".repeat(9));
    assert_eq!(
        interpolate::text(&nested, &BTreeMap::new()),
        Err(InterpolationError::TooDeep)
    );
    let eight = format!("{}x{}", "${A:-".repeat(8), "}".repeat(8));
    assert_eq!(
        interpolate::text(&eight, &BTreeMap::new()).as_deref(),
        Ok("x")
    );
}

#[test]
fn a_built_in_variable_that_is_not_set_says_what_central_needs() {
    let got = parse(&web_file("    hostname: ${CAIRN_SITE}\n"), &[]).unwrap_err();
    assert!(
        got.contains("variable CAIRN_SITE is not set on this device; central sets CAIRN_SITE for a device at a site (cairnctl device site ID SITE)"),
        "{got}"
    );
}

fn check(text: &str, pairs: &[(&str, &str)]) -> Result<Privileges, String> {
    AppSpec::check_with_unset_variables("compose.yml", "shop", text, &variables(pairs))
        .map_err(|e| e.to_string())
}

#[test]
fn the_check_before_variables_are_known_passes_unset_ones_and_keeps_other_problems() {
    let text = web_file(
        "    hostname: ${CAIRN_SITE}\n    ports:\n      - \"${PORT}:80\"\n      - \"${PORT2?needed}:81\"\n    cap_add: [NET_ADMIN]\n    devices: [\"/dev/ttyUSB0\"]\n",
    );
    let privileges = check(&text, &[]).unwrap();
    assert!(privileges.capabilities.contains("CAP_NET_ADMIN"));
    assert!(privileges.devices.contains("/dev/ttyUSB0"));
    // Variables it is given are put in and checked.
    let got = check(&text, &[("PORT", "not-a-port")]).unwrap_err();
    assert!(
        got.contains("compose.yml:6: services.web.ports[0]"),
        "{got}"
    );
    // Problems elsewhere, and syntax errors, stay problems.
    let got = check(
        &web_file("    hostname: ${A}\n    restart: sometimes\n"),
        &[],
    )
    .unwrap_err();
    assert!(got.contains("compose.yml:5: services.web.restart"), "{got}");
    assert!(!got.contains("compose.yml:4"), "{got}");
    let got = check(&web_file("    command: echo ${A\n"), &[]).unwrap_err();
    assert!(got.contains("has no closing '}'"), "{got}");
}

#[test]
fn the_check_before_variables_are_known_refuses_variables_in_privileges() {
    for lines in [
        "    cap_add: [\"${CAP}\"]\n",
        "    cap_add: [\"${CAP:-NET_ADMIN}\"]\n",
        "    devices: [\"${DEV}:/dev/x\"]\n",
    ] {
        let got = check(&web_file(lines), &[("CAP", "NET_ADMIN")]).unwrap_err();
        assert!(
            got.contains("uses a variable, but central checks the host devices and capabilities"),
            "{lines}: {got}"
        );
    }
    // `$$` is no variable.
    assert!(check(
        &web_file("    cap_add: [NET_ADMIN]\n    environment: {A: $$B}\n"),
        &[]
    )
    .is_ok());
}
