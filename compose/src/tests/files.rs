//! Secrets and configs: the top-level declarations, the short and long syntax of a service's
//! mounts, their defaults, and every refusal with its line.

use std::collections::BTreeMap;

use super::super::*;
use super::{assert_error, web_error, web_file};

/// `web_file(lines)` with top-level `secrets: {token: {}}` and `configs: {app.conf: ...}`.
fn with_declarations(lines: &str) -> String {
    let tail = "secrets:\n  token: {}\nconfigs:\n  app.conf:\n    content: |\n      level=info\n";
    format!("{}{tail}", web_file(lines))
}

fn web_of(lines: &str) -> ServiceSpec {
    match AppSpec::parse("compose.yml", "shop", &with_declarations(lines)) {
        Ok(mut app) => app.services.remove("web").unwrap(),
        Err(e) => panic!("expected a valid file, got:\n{e}"),
    }
}

fn mount(source: &str, target: &str, uid: u32, gid: u32, mode: u32) -> FileMount {
    FileMount {
        source: source.into(),
        target: target.into(),
        uid,
        gid,
        mode,
    }
}

#[test]
fn short_syntax_mounts_secrets_in_run_secrets_and_configs_at_the_root() {
    let web = web_of("    secrets: [token]\n    configs: [app.conf]\n");
    assert_eq!(
        web.secrets,
        [mount("token", "/run/secrets/token", 0, 0, 0o444)]
    );
    assert_eq!(web.configs, [mount("app.conf", "/app.conf", 0, 0, 0o444)]);
    let app = AppSpec::parse("compose.yml", "shop", &with_declarations("")).unwrap();
    assert_eq!(app.configs["app.conf"], "level=info\n");
    assert!(app.secrets.contains("token"));
}

#[test]
fn long_syntax_sets_target_owner_and_mode() {
    let web = web_of(
        "    secrets:\n      - source: token\n        target: api-key\n        uid: \"1000\"\n        gid: 1001\n        mode: 0440\n      - source: token\n        target: /etc/app//./token\n        mode: \"0o400\"\n    configs:\n      - source: app.conf\n        target: /etc/app/app.conf\n        uid: 33\n        gid: \"33\"\n        mode: 0640\n      - source: app.conf\n        target: conf/app.conf\n      - {source: app.conf, target: /srv/zero, mode: 0}\n",
    );
    assert_eq!(
        web.secrets,
        [
            mount("token", "/run/secrets/api-key", 1000, 1001, 0o440),
            mount("token", "/etc/app/token", 0, 0, 0o400),
        ]
    );
    assert_eq!(
        web.configs,
        [
            mount("app.conf", "/etc/app/app.conf", 33, 33, 0o640),
            mount("app.conf", "/conf/app.conf", 0, 0, 0o444),
            mount("app.conf", "/srv/zero", 0, 0, 0),
        ]
    );
}

#[test]
fn configs_are_templated_by_the_variables() {
    let text = "services:\n  web:\n    image: busybox\n    configs: [site.conf]\nconfigs:\n  site.conf:\n    content: |\n      site=${CAIRN_SITE}\n      region=${REGION:-eu}\n      price=$$5\n";
    let variables = BTreeMap::from([("CAIRN_SITE".to_string(), "berlin-1".to_string())]);
    let app = AppSpec::parse_with_variables("compose.yml", "shop", text, &variables).unwrap();
    assert_eq!(
        app.configs["site.conf"],
        "site=berlin-1\nregion=eu\nprice=$5\n"
    );
    let err = AppSpec::parse("compose.yml", "shop", text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compose.yml:8: configs.site.conf.content: variable CAIRN_SITE is not set"),
        "{err}"
    );
}

#[test]
fn an_empty_config_is_an_empty_file() {
    let text = "services:\n  web:\n    image: busybox\nconfigs:\n  empty:\n    content: \"\"\n  x-note: {content: ignored}\n";
    let app = AppSpec::parse("compose.yml", "shop", text).unwrap();
    assert_eq!(app.configs["empty"], "");
    // An `x-` key under `configs` names a config, as under `secrets`, not an extension.
    assert!(app.configs.contains_key("x-note"));
}

#[test]
fn top_level_secrets_take_no_file_variable_or_options() {
    let top = "services:\n  web:\n    image: a\nsecrets:\n  token:\n";
    for (key, expected) in [
        ("file: ./token.txt", "compose.yml:6: secrets.token.file: secret values are provided by central, not read from a file on the device; leave \"file\" out and write `token: {}` or `token:`"),
        ("environment: TOKEN", "compose.yml:6: secrets.token.environment: secret values are provided by central, not taken from a variable"),
        ("external: true", "compose.yml:6: secrets.token.external: secret values are provided by central under the secret's name, so `external` and `name` are not needed"),
        ("name: other", "compose.yml:6: secrets.token.name: secret values are provided by central under the secret's name"),
        ("labels: {a: b}", "compose.yml:6: secrets.token.labels: secret values are provided by central and a secret takes no options"),
    ] {
        assert_error(&format!("{top}    {key}\n"), expected);
    }
    assert_error(
        "services:\n  web:\n    image: a\nsecrets:\n  token: ./token.txt\n",
        "compose.yml:5: secrets.token: secret values are provided by central; write `token: {}` or `token:`",
    );
    assert_error(
        "services:\n  web:\n    image: a\nsecrets:\n  \"bad/name\": {}\n",
        "secrets.bad/name: \"bad/name\" is not a usable secret name",
    );
}

#[test]
fn top_level_configs_need_inline_content() {
    let top = "services:\n  web:\n    image: a\nconfigs:\n  app:\n";
    for (key, expected) in [
        ("file: ./app.conf", "compose.yml:6: configs.app.file: is not supported: a device has no host files to read a config from; write the file's text under `content`"),
        ("environment: APP_CONF", "compose.yml:6: configs.app.environment: is not supported: configs are not read from a variable; write the file's text under `content`"),
        ("external: true", "compose.yml:6: configs.app.external: is not supported: a device has no config store; write the file's text under `content`"),
        ("name: other", "compose.yml:6: configs.app.name: is not supported: the key under `configs` is the config's name"),
        ("template_driver: golang", "compose.yml:6: configs.app.template_driver: unknown key \"template_driver\"; supported keys here: content"),
        ("x-note: fine", "compose.yml:6: configs.app.content: is missing; give the file's text"),
        ("content:", "compose.yml:6: configs.app.content: is empty; give the file's text (write \"\" for an empty file)"),
        ("content: [a]", "compose.yml:6: configs.app.content: must be the file's text"),
    ] {
        assert_error(&format!("{top}    {key}\n"), expected);
    }
    assert_error(
        &format!("{top}    content: {}\n", "x".repeat(MAX_CONFIG_BYTES + 1)),
        "compose.yml:6: configs.app.content: is 65537 bytes; a config holds at most 64 KiB",
    );
    assert_error(
        "services:\n  web:\n    image: a\nconfigs:\n  app:\n",
        "compose.yml:5: configs.app: must be a mapping with the file's text, e.g. `app: {content: \"...\"}`",
    );
    assert_error(
        "services:\n  web:\n    image: a\nconfigs:\n  \"../etc\": {content: x}\n",
        "configs.../etc: \"../etc\" is not a usable config name",
    );
}

#[test]
fn a_service_mounts_only_declared_secrets_and_configs() {
    web_error(
        "    secrets: [token]\n",
        "compose.yml:4: services.web.secrets[0]: secret \"token\" is not declared in the top-level `secrets`; add it there",
    );
    web_error(
        "    configs:\n      - source: app.conf\n",
        "compose.yml:5: services.web.configs[0]: config \"app.conf\" is not declared in the top-level `configs`; add it there",
    );
    assert_error(
        &with_declarations("    configs: [token]\n"),
        "compose.yml:4: services.web.configs[0]: config \"token\" is not declared",
    );
}

#[test]
fn long_syntax_errors_name_the_key_and_its_line() {
    for (lines, expected) in [
        ("      - target: x\n", "compose.yml:5: services.web.secrets[0].source: is missing; name a secret declared in the top-level `secrets`, e.g. `source: NAME`"),
        ("      - source: token\n        size: 3\n", "compose.yml:6: services.web.secrets[0].size: unknown key \"size\"; supported keys here: source, target, uid, gid, mode"),
        ("      - source: token\n        target: ../etc/passwd\n", "compose.yml:6: services.web.secrets[0].target: target \"../etc/passwd\": container path \"/run/secrets/../etc/passwd\" must not contain \"..\"; write a file name or an absolute path"),
        ("      - source: token\n        target: /\n", "compose.yml:6: services.web.secrets[0].target: target \"/\": cannot mount over the container's root"),
        ("      - source: token\n        target: /proc/self/x\n", "compose.yml:6: services.web.secrets[0].target: target \"/proc/self/x\" is in /proc, which the runtime mounts itself"),
        ("      - source: token\n        target: /dev\n", "target \"/dev\" is in /dev"),
        ("      - source: token\n        uid: -1\n", "compose.yml:6: services.web.secrets[0].uid: uid \"-1\" is not an id from 0 to 65535 (ids inside the container); write a number such as 1000"),
        ("      - source: token\n        gid: 65536\n", "compose.yml:6: services.web.secrets[0].gid: gid \"65536\" is not an id from 0 to 65535"),
        ("      - source: token\n        mode: 440\n", "compose.yml:6: services.web.secrets[0].mode: mode \"440\" is not an octal mode from 0 to 0777 with a leading 0; write e.g. 0440"),
        ("      - source: token\n        mode: 04755\n", "mode \"04755\" is not an octal mode from 0 to 0777"),
        ("      - source: token\n        mode: 0o9\n", "mode \"0o9\" is not an octal mode"),
        ("      - source: token\n        mode:\n", "compose.yml:6: services.web.secrets[0].mode: is empty; give an octal mode such as 0440"),
        ("      - [token]\n", "compose.yml:5: services.web.secrets[0]: must be a secret name, found a list"),
    ] {
        assert_error(&with_declarations(&format!("    secrets:\n{lines}")), expected);
    }
    let long = format!(
        "      - source: token\n        target: /{}\n",
        "a".repeat(1024)
    );
    assert_error(
        &with_declarations(&format!("    secrets:\n{long}")),
        "compose.yml:6: services.web.secrets[0].target: target is longer than 1024 bytes",
    );
    let many = format!("    secrets: [{}]\n", vec!["token"; 65].join(", "));
    assert_error(
        &with_declarations(&many),
        "compose.yml:4: services.web.secrets: has 65 entries; at most 64 are allowed",
    );
}

#[test]
fn two_files_or_mounts_at_one_path_are_refused() {
    for (lines, expected) in [
        (
            "    secrets: [token, {source: token, target: token}]\n",
            "compose.yml:4: services.web.secrets[1]: /run/secrets/token is already where secret \"token\" is mounted; give this secret another `target`",
        ),
        (
            "    secrets: [{source: token, target: /app.conf}]\n    configs: [app.conf]\n",
            "compose.yml:5: services.web.configs[0]: /app.conf is already where secret \"token\" is mounted; give this config another `target`",
        ),
        (
            "    volumes: [\"data:/etc/app/\"]\n    configs: [{source: app.conf, target: /etc/app}]\n",
            "compose.yml:5: services.web.configs[0]: /etc/app is already where volume \"data\" is mounted",
        ),
        (
            "    tmpfs: /run/secrets/token\n    secrets: [token]\n",
            "compose.yml:5: services.web.secrets[0]: /run/secrets/token is already where a tmpfs is mounted",
        ),
        (
            "    configs: [{source: app.conf, target: /etc/hosts}]\n",
            "compose.yml:4: services.web.configs[0]: /etc/hosts is already where the runtime mounts its own file",
        ),
    ] {
        assert_error(&with_declarations(lines), expected);
    }
    // A file inside a volume or tmpfs is fine: it is mounted after them.
    let web = web_of("    volumes: [\"data:/etc/app\"]\n    tmpfs: /run\n    secrets: [token]\n    configs: [{source: app.conf, target: /etc/app/app.conf}]\n");
    assert_eq!(web.configs[0].target, "/etc/app/app.conf");
}
