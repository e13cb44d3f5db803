//! The service keys of everyday Compose files: user, hosts, labels, tmpfs, stop settings,
//! capabilities, ulimits, sysctls, logging, devices, and the keys refused with a reason.

use std::collections::BTreeSet;
use std::time::Duration;

use super::super::fields::{self, UserError};
use super::super::*;
use super::{web, web_error, web_file};

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
        "compose.yml:4: services.web.stop_grace_period: \"2h\" is longer than the 2m maximum",
    );
    web_error(
        "    stop_grace_period: soon\n",
        "services.web.stop_grace_period: \"soon\" is not a duration",
    );
    assert_eq!(
        web("    stop_grace_period: 2m\n").stop_grace_period,
        Some(Duration::from_secs(120))
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
fn tmpfs_mounts_take_a_size_and_a_mode() {
    let web = web("    tmpfs:\n      - /run\n      - /cache/:size=16m,mode=0755\n      - \"/scratch:mode=700\"\n");
    let mounts: Vec<(&str, u64, u32)> = web
        .tmpfs
        .iter()
        .map(|m| (m.target.as_str(), m.size_bytes, m.mode))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/run", DEFAULT_TMPFS_BYTES, 0o1777),
            ("/cache", 16 << 20, 0o755),
            ("/scratch", DEFAULT_TMPFS_BYTES, 0o700)
        ]
    );
    assert_eq!(super::web("    tmpfs: /tmp\n").tmpfs[0].target, "/tmp");
    assert_eq!(
        super::web("    tmpfs: \"/tmp:size=1g\"\n").tmpfs[0].size_bytes,
        1 << 30
    );
}

#[test]
fn tmpfs_refuses_system_dirs_unknown_options_and_sizes_over_a_gib() {
    let cases = [
        ("rel", "container path \"rel\" must be absolute"),
        ("/", "cannot mount over the container's root"),
        (
            "/proc",
            "\"/proc\" is in /proc, which the runtime mounts itself",
        ),
        ("//sys/./fs", "\"/sys/fs\" is in /sys"),
        ("/dev/shm", "\"/dev/shm\" is in /dev"),
        (
            "/x:noexec",
            "option \"noexec\" is not supported (supported: size, mode)",
        ),
        ("/x:size=2g", "size \"2g\" is above the 1g maximum"),
        ("/x:size=lots", "size \"lots\" is not a size"),
        ("/x:mode=8", "mode \"8\" is not an octal mode"),
        ("/x:mode=17777", "mode \"17777\" is not an octal mode"),
        ("/x:size=1m,size=2m", "option size is given twice"),
    ];
    for (entry, expected) in cases {
        web_error(
            &format!("    tmpfs: [\"{entry}\"]\n"),
            &format!("compose.yml:4: services.web.tmpfs[0]: \"{entry}\" is not a tmpfs mount: {expected}"),
        );
    }
    // /process and /devices are not /proc or /dev.
    web("    tmpfs: [/process, /devices]\n");
}

#[test]
fn tmpfs_on_a_volume_target_or_twice_is_refused() {
    // tmpfs written before volumes is still checked against them.
    web_error(
        "    tmpfs: [/data/]\n    volumes: [\"store:/data\"]\n",
        "compose.yml:4: services.web.tmpfs[0]: /data is already where volume \"store\" is mounted",
    );
    web_error(
        "    tmpfs: [/a, \"/a:size=1m\"]\n",
        "services.web.tmpfs[1]: /a is mounted twice",
    );
    let many: String = (0..17).map(|i| format!("      - /t{i}\n")).collect();
    web_error(
        &format!("    tmpfs:\n{many}"),
        "services.web.tmpfs: has 17 entries; at most 16 are allowed",
    );
}

#[test]
fn capabilities_are_normalized_and_checked_against_the_linux_list() {
    let web = web("    cap_add: [net_admin, CAP_SYS_NICE, Chown]\n    cap_drop: [all]\n");
    assert_eq!(
        web.cap_add.iter().collect::<Vec<_>>(),
        ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_NICE"]
    );
    assert_eq!(web.cap_drop.iter().collect::<Vec<_>>(), ["ALL"]);
    web_error(
        "    cap_add: [NET_ADMN]\n",
        "compose.yml:4: services.web.cap_add[0]: \"NET_ADMN\" is not a Linux capability",
    );
    web_error(
        "    cap_add: [ALL]\n",
        "services.web.cap_add[0]: ALL would give the service every capability, which makes it a privileged container",
    );
    web_error(
        "    cap_add: [NET_ADMIN, cap_net_admin]\n",
        "services.web.cap_add[1]: CAP_NET_ADMIN is listed twice",
    );
    web_error(
        "    cap_drop: [NET_RAW]\n    cap_add: [net_raw]\n",
        "compose.yml:4: services.web.cap_drop[0]: CAP_NET_RAW is both added and dropped",
    );
}

#[test]
fn the_capability_list_is_the_41_of_linux() {
    let caps = ALL_CAPABILITIES;
    assert_eq!(caps.len(), 41);
    assert_eq!(caps.iter().collect::<BTreeSet<_>>().len(), 41);
    assert_eq!(
        (caps[0], caps[21], caps[40]),
        ("CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE")
    );
    for cap in DEFAULT_CAPABILITIES {
        assert!(caps.contains(cap), "{cap}");
    }
    for (cap, _) in fields::NEVER_GRANTED {
        assert!(caps.contains(cap), "{cap}");
        assert!(!DEFAULT_CAPABILITIES.contains(cap), "{cap}");
    }
}

#[test]
fn capabilities_that_escape_confinement_are_never_granted() {
    for (cap, reason) in fields::NEVER_GRANTED {
        let short = cap.trim_start_matches("CAP_");
        web_error(
            &format!("    cap_add: [{short}]\n"),
            &format!("services.web.cap_add[0]: {cap} is never granted on Cairn: it {reason}"),
        );
        // Dropping them is fine.
        web(&format!("    cap_drop: [{short}]\n"));
    }
    for required in [
        "SYS_ADMIN",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_PTRACE",
        "SYS_BOOT",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "BPF",
        "PERFMON",
        "DAC_READ_SEARCH",
        "LINUX_IMMUTABLE",
        "SYSLOG",
    ] {
        let cap = format!("CAP_{required}");
        assert!(
            fields::NEVER_GRANTED.iter().any(|(c, _)| *c == cap),
            "{cap}"
        );
    }
}

#[test]
fn privileges_list_devices_and_capabilities_outside_the_default_set() {
    let text = web_file("    cap_add: [CHOWN, NET_ADMIN]\n    devices: [/dev/ttyUSB0]\n  other:\n    image: busybox\n    cap_add: [SYS_NICE]\n    devices: [\"/dev/gpiochip0:/dev/gpiochip0:rw\"]\n");
    let app = AppSpec::parse("compose.yml", "shop", &text).unwrap();
    let privileges = app.privileges();
    assert_eq!(
        privileges.capabilities.iter().collect::<Vec<_>>(),
        ["CAP_NET_ADMIN", "CAP_SYS_NICE"]
    );
    assert_eq!(
        privileges.devices.iter().collect::<Vec<_>>(),
        ["/dev/gpiochip0", "/dev/ttyUSB0"]
    );
}

#[test]
fn ulimits_take_a_number_or_soft_and_hard() {
    let web = web("    ulimits:\n      nproc: 512\n      nofile: {soft: 20000, hard: 40000}\n      memlock: 67108864\n      rtprio: 0\n");
    assert_eq!(
        web.ulimits["nproc"],
        Ulimit {
            soft: 512,
            hard: 512
        }
    );
    assert_eq!(
        web.ulimits["nofile"],
        Ulimit {
            soft: 20000,
            hard: 40000
        }
    );
    assert_eq!(web.ulimits["memlock"].hard, 64 << 20);
    assert_eq!(web.ulimits["rtprio"].hard, 0);
}

#[test]
fn ulimits_refuse_unknown_names_bad_numbers_inverted_limits_and_rtprio() {
    let base = "    ulimits:\n";
    web_error(
        &format!("{base}      files: 10\n"),
        "compose.yml:5: services.web.ulimits.files: unknown key \"files\"; supported keys here: core, cpu,",
    );
    web_error(
        &format!("{base}      nofile: -1\n"),
        "services.web.ulimits.nofile: \"-1\" is not a limit; write a whole number (-1, unlimited, is not accepted)",
    );
    web_error(
        &format!("{base}      nofile:\n        soft: 10\n        hard: x\n"),
        "compose.yml:7: services.web.ulimits.nofile.hard: \"x\" is not a limit",
    );
    web_error(
        &format!("{base}      nofile: {{soft: 20, hard: 10}}\n"),
        "services.web.ulimits.nofile: soft limit 20 is above the hard limit 10",
    );
    web_error(
        &format!("{base}      nofile: {{soft: 10}}\n"),
        "services.web.ulimits.nofile: needs both soft and hard",
    );
    web_error(
        &format!("{base}      nofile: 2000000\n"),
        "services.web.ulimits.nofile: nofile limit 2000000 is above the 1048576 maximum",
    );
    web_error(
        &format!("{base}      rtprio: 10\n"),
        "services.web.ulimits.rtprio: rtprio 10 would let the service run real-time threads",
    );
}

#[test]
fn sysctls_must_be_namespaced_and_not_net_on_the_host_network() {
    let web = web("    sysctls:\n      net.core.somaxconn: 1024\n      kernel.sem: 250 32000 100 128\n      fs.mqueue.msg_max: \"64\"\n");
    assert_eq!(web.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(web.sysctls["kernel.sem"], "250 32000 100 128");
    let listed = super::web("    sysctls: [\"net.ipv4.ip_forward=1\"]\n");
    assert_eq!(listed.sysctls["net.ipv4.ip_forward"], "1");
    web_error(
        "    sysctls: {kernel.panic: 1}\n",
        "compose.yml:4: services.web.sysctls.kernel.panic: kernel.panic is not a namespaced sysctl, so it would change the whole device; allowed: net.*, kernel.msgmax,",
    );
    web_error(
        "    sysctls: [Net.Core=1]\n",
        "services.web.sysctls[0]: \"Net.Core\" is not a sysctl name",
    );
    web_error(
        "    sysctls: [net.core.somaxconn]\n",
        "services.web.sysctls[0]: net.core.somaxconn has no value",
    );
    web_error(
        "    sysctls: {net.core.somaxconn: \"\\t\"}\n",
        "the value of net.core.somaxconn must be 1 to 256 printable characters",
    );
    // network_mode is read first, wherever it is written.
    web_error(
        "    sysctls: {net.ipv4.ip_forward: 1}\n    network_mode: host\n",
        "compose.yml:4: services.web.sysctls.net.ipv4.ip_forward: net.ipv4.ip_forward would change the device's own network, since the service uses network_mode: host",
    );
    super::web("    sysctls: {kernel.shmmax: 1}\n    network_mode: host\n");
}

#[test]
fn logging_keeps_logs_on_the_device_within_limits() {
    let web = web("    logging:\n      driver: json-file\n      options:\n        max-size: 10m\n        max-file: \"3\"\n");
    assert_eq!(
        web.logging,
        LogLimits {
            max_bytes: Some(10 << 20),
            max_files: Some(3)
        }
    );
    assert_eq!(
        super::web("    logging: {options: {max-file: 20}}\n")
            .logging
            .max_files,
        Some(20)
    );
    assert_eq!(
        super::web("    logging: {driver: local}\n").logging,
        LogLimits::default()
    );
    web_error(
        "    logging:\n      driver: syslog\n",
        "compose.yml:5: services.web.logging.driver: \"syslog\" is not supported: logs stay on the device",
    );
    web_error(
        "    logging: {options: {max-size: 1k}}\n",
        "services.web.logging.options.max-size: \"1k\" is not a log size from 64k to 1g",
    );
    web_error(
        "    logging: {options: {max-file: 21}}\n",
        "services.web.logging.options.max-file: \"21\" is not a number of log files from 1 to 20",
    );
    web_error(
        "    logging: {options: {compress: \"true\"}}\n",
        "services.web.logging.options.compress: unknown key \"compress\"; supported keys here: max-size, max-file",
    );
}

#[test]
fn devices_take_short_and_long_forms() {
    let web = web("    devices:\n      - /dev/ttyUSB0\n      - /dev/ttyACM0:/dev/modem\n      - /dev/i2c-1:/dev/i2c-1:rw\n      - /dev/gpiochip0:r\n      - {source: /dev/video0, target: /dev/cam, permissions: rwm}\n      - {source: /dev/hidraw0}\n");
    let devices: Vec<(&str, &str, &str)> = web
        .devices
        .iter()
        .map(|d| {
            (
                d.host.as_str(),
                d.container.as_str(),
                d.permissions.as_str(),
            )
        })
        .collect();
    assert_eq!(
        devices,
        [
            ("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm"),
            ("/dev/ttyACM0", "/dev/modem", "rwm"),
            ("/dev/i2c-1", "/dev/i2c-1", "rw"),
            ("/dev/gpiochip0", "/dev/gpiochip0", "r"),
            ("/dev/video0", "/dev/cam", "rwm"),
            ("/dev/hidraw0", "/dev/hidraw0", "rwm"),
        ]
    );
    web_error(
        "    devices: [/dev/ttyUSB0, \"/dev/ttyUSB1:/dev/ttyUSB0\"]\n",
        "services.web.devices[1]: /dev/ttyUSB0 is given twice in the container",
    );
    web_error(
        "    devices: [{target: /dev/x}]\n",
        "compose.yml:4: services.web.devices[0].source: is missing",
    );
}

#[test]
fn devices_reaching_the_tpm_disks_or_kernel_memory_are_refused() {
    for (device, reason) in [
        ("/dev/tpm0", "reaches the TPM"),
        ("/dev/tpmrm0", "reaches the TPM"),
        ("/dev/sda", "may be the system disk"),
        ("/dev/sdb1", "may be the system disk"),
        ("/dev/vda", "may be the system disk"),
        ("/dev/nvme0n1p2", "may be the system disk"),
        ("/dev/nvme0", "may be the system disk"),
        ("/dev/mmcblk0p1", "may be the system disk"),
        ("/dev/dm-0", "may be the system disk"),
        ("/dev/mapper/data", "may be the system disk"),
        ("/dev/disk/by-label/root", "may be the system disk"),
        ("/dev/sg0", "may be the system disk"),
        ("/dev/loop0", "may be the system disk"),
        ("/dev/mem", "reaches kernel memory"),
        ("/dev/kmem", "reaches kernel memory"),
        ("/dev/port", "reaches kernel memory"),
        ("/dev/kmsg", "reaches kernel memory"),
        ("/dev/char/10:224", "names devices by number"),
        ("/dev/watchdog0", "reboots the device"),
        ("/dev/ng0n1", "may be the system disk"),
        ("/dev/nbd0", "may be the system disk"),
        ("/dev/sr0", "may be the system disk"),
        ("/dev/vfio/12", "direct access to all memory"),
        ("/dev/uio0", "direct access to all memory"),
        ("/dev/tty0", "console"),
        ("/dev/tty63", "console"),
        ("/dev/console", "console"),
        ("/dev/fd/3", "the agent's own open files"),
    ] {
        let error = fields::parse_device(device).unwrap_err().to_string();
        assert!(error.contains(reason), "{device}: {error}");
    }
    // Names that only start like a refused one.
    for fine in [
        "/dev/sgx_enclave",
        "/dev/memory_bandwidth",
        "/dev/portal0",
        "/dev/snd/pcmC0D0p",
        "/dev/ttyUSB0",
        "/dev/ttyACM1",
        "/dev/ttyS0",
    ] {
        assert!(fields::parse_device(fine).is_ok(), "{fine}");
    }
    web_error(
        "    devices: [/dev/tpmrm0]\n",
        "compose.yml:4: services.web.devices[0]: \"/dev/tpmrm0\" is not a usable device: /dev/tpmrm0 reaches the TPM, which holds the device's identity and disk keys",
    );
    web_error(
        "    devices: [{source: /dev/sda}]\n",
        "services.web.devices[0]: /dev/sda is a disk, a partition or a view of one, and may be the system disk",
    );
}

#[test]
fn device_paths_must_be_plain_paths_under_dev() {
    for (entry, reason) in [
        ("/dev", "\"/dev\" is not a path under /dev/"),
        ("/dev/", "\"/dev/\" is not a path under /dev/"),
        ("/etc/passwd", "\"/etc/passwd\" is not a path under /dev/"),
        ("/dev/../etc/shadow", "has an empty, \".\" or \"..\" part"),
        ("/dev//tpm0", "has an empty, \".\" or \"..\" part"),
        ("/dev/./tpm0", "has an empty, \".\" or \"..\" part"),
        ("/dev/ttyS0:/tmp/x", "\"/tmp/x\" is not a path under /dev/"),
        (
            "/dev/ttyS0:/dev/ttyS0:rwx",
            "permissions \"rwx\" are not a non-empty subset of \"rwm\"",
        ),
        ("/dev/ttyS0:/dev/ttyS0:rr", "permissions \"rr\""),
        ("/dev/ttyS0:/dev/ttyS0:", "permissions \"\""),
        (
            "/dev/ttyS0::rw",
            "write \"/dev/HOST[:/dev/CONTAINER][:rwm]\"",
        ),
        ("/dev/a:/dev/b:r:x", "write \"/dev/HOST"),
        ("vendor.com/gpu=all", "is not a path under /dev/"),
    ] {
        let error = fields::parse_device(entry).unwrap_err().to_string();
        assert!(error.contains(reason), "{entry}: {error}");
    }
    let many: String = (0..65).map(|i| format!("      - /dev/ttyS{i}\n")).collect();
    web_error(
        &format!("    devices:\n{many}"),
        "services.web.devices: has 65 entries; at most 64 are allowed",
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

#[test]
fn every_new_key_is_checked_in_a_full_file() {
    let text = "services:\n  web:\n    image: busybox\n    user: app\n    read_only: true\n    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE]\n    tmpfs: [/tmp]\n    ulimits: {nofile: 4096}\n    logging: {options: {max-size: 1m, max-file: 2}}\n    depends_on: [db]\n    x-note: ignored\n  db:\n    image: busybox\n    healthcheck: {test: [CMD, \"true\"]}\n";
    let app = AppSpec::parse("compose.yml", "shop", text).unwrap();
    let web = &app.services["web"];
    assert_eq!(web.depends_on["db"], DependsOn::ServiceStarted);
    assert!(web.cap_drop.contains("ALL"));
    assert!(app.privileges().capabilities.is_empty());
}
