//! The service keys of everyday Compose files, and the keys refused with a reason.

use super::web_error;

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
