//! The service keys of everyday Compose files: user, hosts, labels, stop settings, and the keys
//! refused with a reason.

use std::time::Duration;

use super::super::fields::{self, UserError};
use super::super::*;
use super::{web, web_error};

#[test]
fn a_service_may_set_its_user_hosts_labels_and_stop_settings() {
    let web = web("    user: \"1000:app\"\n    extra_hosts:\n      - db=10.0.0.5\n      - \"legacy:10.0.0.6\"\n      - \"v6:[::1]\"\n      - v6b=::2\n    labels: [com.example.role=front, com.example.empty]\n    stop_signal: SIGINT\n    stop_grace_period: 1m30s\n");
    assert_eq!(web.user.as_deref(), Some("1000:app"));
    let hosts: Vec<String> = web
        .extra_hosts
        .iter()
        .map(|h| format!("{} {}", h.host, h.ip))
        .collect();
    assert_eq!(
        hosts,
        ["db 10.0.0.5", "legacy 10.0.0.6", "v6 ::1", "v6b ::2"]
    );
    assert_eq!(web.labels["com.example.role"], "front");
    assert_eq!(web.labels["com.example.empty"], "");
    assert_eq!(web.stop_signal, Some(2));
    assert_eq!(web.stop_grace_period, Some(Duration::from_secs(90)));
    // The mapping forms, and a user id written as a number.
    let web = super::web(
        "    user: 1000\n    extra_hosts: {db: \"10.0.0.5\"}\n    labels: {com.example.n: 3}\n",
    );
    assert_eq!(web.user.as_deref(), Some("1000"));
    assert_eq!(web.extra_hosts[0].host, "db");
    assert_eq!(web.labels["com.example.n"], "3");
}

#[test]
fn users_are_names_or_ids_with_an_optional_group() {
    for good in [
        "app",
        "1000",
        "1000:1000",
        "www-data:adm",
        "_svc.1",
        "4294967294",
    ] {
        assert_eq!(fields::parse_user(good).unwrap(), good);
    }
    let reason = |text: &str| match fields::parse_user(text) {
        Err(FieldError::User { reason, .. }) => reason,
        other => panic!("{text}: {other:?}"),
    };
    assert_eq!(reason(""), UserError::Empty);
    assert_eq!(reason("app:"), UserError::Empty);
    assert_eq!(reason("a:b:c"), UserError::TooManyParts);
    assert!(matches!(
        reason("-app"),
        UserError::Character { found: '-', .. }
    ));
    assert!(matches!(
        reason("a b"),
        UserError::Character { found: ' ', .. }
    ));
    assert!(matches!(reason(&"u".repeat(33)), UserError::TooLong { .. }));
    assert!(matches!(reason("4294967295"), UserError::IdTooLarge { .. }));
    assert!(matches!(
        reason("1:99999999999"),
        UserError::IdTooLarge { .. }
    ));
}

#[test]
fn bad_users_name_the_part_that_is_wrong() {
    web_error(
        "    user: \"app:ad min\"\n",
        "compose.yml:4: services.web.user: \"app:ad min\" is not a user: \"ad min\" contains ' '; names use letters, digits, '.', '_' and '-' (not first); write NAME_OR_UID[:NAME_OR_GID]",
    );
}

#[test]
fn stop_signals_map_names_and_numbers_to_linux_numbers() {
    for (text, number) in [
        ("SIGTERM", 15),
        ("TERM", 15),
        ("sigint", 2),
        ("SIGKILL", 9),
        ("SIGUSR1", 10),
        ("SIGWINCH", 28),
        ("SIGPOLL", 29),
        ("SIGIO", 29),
        ("SIGSYS", 31),
        ("SIGRTMIN", 34),
        ("SIGRTMIN+3", 37),
        ("RTMAX-1", 63),
        ("SIGRTMAX", 64),
        ("1", 1),
        ("64", 64),
    ] {
        assert_eq!(fields::parse_stop_signal(text), Ok(number), "{text}");
    }
    for bad in [
        "0",
        "65",
        "SIGFOO",
        "",
        "SIGRTMIN+31",
        "RTMIN3",
        "RTMAX+1",
        "-15",
        "SIG",
    ] {
        assert!(
            matches!(
                fields::parse_stop_signal(bad),
                Err(FieldError::Signal { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn sigstop_is_refused_as_a_stop_signal_with_the_reason() {
    for stop in ["SIGSTOP", "stop", "19"] {
        assert!(matches!(
            fields::parse_stop_signal(stop),
            Err(FieldError::StopSignal { .. })
        ));
    }
    web_error(
        "    stop_signal: SIGSTOP\n",
        "compose.yml:4: services.web.stop_signal: \"SIGSTOP\" is SIGSTOP, which pauses the service instead of stopping it",
    );
}

#[test]
fn unknown_signals_and_long_grace_periods_are_refused() {
    web_error(
        "    stop_signal: SIGNOPE\n",
        "services.web.stop_signal: \"SIGNOPE\" is not a signal; write a name such as \"SIGTERM\"",
    );
    web_error(
        "    stop_grace_period: 2h\n",
        "compose.yml:4: services.web.stop_grace_period: \"2h\" is longer than the 1h maximum",
    );
    web_error(
        "    stop_grace_period: soon\n",
        "services.web.stop_grace_period: \"soon\" is not a duration",
    );
    assert_eq!(
        web("    stop_grace_period: 1h\n").stop_grace_period,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn bad_extra_hosts_name_the_host_or_the_address() {
    web_error(
        "    extra_hosts:\n      - \"db=10.0.0.5\"\n      - \"-db=10.0.0.6\"\n",
        "compose.yml:6: services.web.extra_hosts[1]: \"-db\" is not a host name",
    );
    web_error(
        "    extra_hosts: {db: nowhere}\n",
        "compose.yml:4: services.web.extra_hosts.db: \"nowhere\" is not an IP address; write e.g. \"db=10.0.0.5\"",
    );
    web_error(
        "    extra_hosts: [db]\n",
        "services.web.extra_hosts[0]: \"db\" has no address; write \"db=IP\"",
    );
    web_error(
        "    extra_hosts: [db=10.0.0.5, \"db:10.0.0.5\"]\n",
        "services.web.extra_hosts[1]: db 10.0.0.5 is listed twice",
    );
    let many: String = (0..257)
        .map(|i| format!("      - h{i}=10.0.0.1\n"))
        .collect();
    web_error(
        &format!("    extra_hosts:\n{many}"),
        "compose.yml:5: services.web.extra_hosts: has 257 entries; at most 256 are allowed",
    );
}

#[test]
fn labels_in_the_agent_namespace_or_too_long_are_refused() {
    web_error(
        "    labels:\n      cairn.spec-hash: x\n",
        "compose.yml:5: services.web.labels.cairn.spec-hash: label \"cairn.spec-hash\" starts with \"cairn.\": those labels are reserved for the agent",
    );
    web_error(
        "    labels: [\"Cairn.x=1\"]\n",
        "services.web.labels[0]: label \"Cairn.x\" starts with \"cairn.\"",
    );
    web_error(
        &format!("    labels: {{\"{}\": x}}\n", "k".repeat(257)),
        "is not a label key: use 1 to 256 bytes",
    );
    web_error(
        &format!("    labels: {{k: \"{}\"}}\n", "v".repeat(4096)),
        "services.web.labels.k: label \"k\" and its value are 4097 bytes; containerd keeps at most 4096 bytes per label",
    );
    web_error(
        "    labels: [a=1, a=2]\n",
        "services.web.labels[1]: a is set twice",
    );
    let many: String = (0..129).map(|i| format!("      - l{i}=x\n")).collect();
    web_error(
        &format!("    labels:\n{many}"),
        "services.web.labels: has 129 entries; at most 128 are allowed",
    );
}

#[test]
fn keys_that_stay_refused_say_why() {
    for (key, value, reason) in [
        (
            "privileged",
            "true",
            "a privileged container holds every capability and every host device",
        ),
        ("pid", "host", "process namespace"),
        ("ipc", "host", "IPC namespace"),
        (
            "cgroup_parent",
            "x",
            "the agent places every service in the app's own cgroup",
        ),
        (
            "security_opt",
            "[seccomp=unconfined]",
            "seccomp filter, AppArmor profile and no-new-privileges",
        ),
        ("userns_mode", "host", "user namespace"),
        (
            "volumes_from",
            "[db]",
            "mount the same named volume in both services",
        ),
        (
            "env_file",
            ".env",
            "a device has no source for the file; write the variables under `environment`",
        ),
        (
            "build",
            ".",
            "devices pull images, they do not build them; build the image, push it to a registry",
        ),
    ] {
        web_error(
            &format!("    {key}: {value}\n"),
            &format!("compose.yml:4: services.web.{key}: is not supported: "),
        );
        web_error(&format!("    {key}: {value}\n"), reason);
    }
    web_error(
        "    network_mode: \"service:db\"\n",
        "services.web.network_mode: \"service:db\" is not supported: services do not share network namespaces",
    );
    web_error(
        "    network_mode: none\n",
        "services.web.network_mode: \"none\" is not supported; only \"host\" is",
    );
}
