//! The default seccomp profile of every service container: Docker's (moby's
//! `profiles/seccomp/default.json`, kept unchanged as data in `seccomp_default.json`), resolved
//! for this machine's architecture and the capability set the container is given, as moby and
//! containerd resolve it.
//!
//! Resolution: the profile's `archMap` entry of the native architecture gives the
//! architectures; a syscall entry applies unless its `includes` name capabilities the bounding
//! set lacks (all must be present), an architecture list without ours or a newer minimum kernel,
//! or its `excludes` name a capability the set has or our architecture. Everything not allowed
//! fails with EPERM (`defaultErrnoRet` 1); `clone3` without CAP_SYS_ADMIN with ENOSYS, so C
//! libraries fall back to `clone`, whose namespace flags are masked off.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ContainerError;

/// Docker's default profile (moby `profiles/seccomp/default.json`, Apache-2.0).
const PROFILE: &str = include_str!("seccomp_default.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    arch_map: Vec<ArchEntry>,
    syscalls: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchEntry {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

/// The machine architecture as seccomp (`SCMP_ARCH_*`) and moby (`amd64`, ...) name it.
fn native_arch() -> Result<(&'static str, &'static str), ContainerError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("SCMP_ARCH_X86_64", "amd64")),
        "aarch64" => Ok(("SCMP_ARCH_AARCH64", "arm64")),
        other => Err(ContainerError::Spec {
            reason: format!(
                "no seccomp profile for architecture {other}; Cairn runs on x86_64 and aarch64"
            ),
        }),
    }
}

/// The newest `minKernel` an entry may name and still apply without a kernel check.
const MAX_KNOWN_MIN_KERNEL: (u32, u32) = (4, 8);

/// `(major, minor)` of a "4.8"-style kernel version.
fn kernel_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `CAP_CHOWN` for [`Capability::Chown`]: oci-spec's own serialization.
fn cap_name(cap: &Capability) -> String {
    serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Docker's default profile resolved for this machine and a container whose bounding set is
/// `bounding`. Kernels older than an entry's `minKernel` are not supported by Cairn (4.8 is the
/// newest asked), so those entries apply.
pub(crate) fn default_profile(
    bounding: &HashSet<Capability>,
) -> Result<LinuxSeccomp, ContainerError> {
    let bad = |reason: String| ContainerError::Spec {
        reason: format!("the built-in seccomp profile: {reason}"),
    };
    let profile: Profile = serde_json::from_str(PROFILE).map_err(|e| bad(e.to_string()))?;
    let (scmp_arch, moby_arch) = native_arch()?;
    let caps: HashSet<String> = bounding.iter().map(cap_name).collect();
    let arch = profile
        .arch_map
        .iter()
        .find(|a| a.architecture == scmp_arch)
        .ok_or_else(|| bad(format!("no archMap entry for {scmp_arch}")))?;
    let mut architectures = vec![arch.architecture.clone()];
    architectures.extend(arch.sub_architectures.clone().unwrap_or_default());
    let mut syscalls = Vec::new();
    for entry in &profile.syscalls {
        let inc = &entry.includes;
        let exc = &entry.excludes;
        if !inc.caps.iter().all(|c| caps.contains(c))
            || (!inc.arches.is_empty() && !inc.arches.iter().any(|a| a == moby_arch))
            || exc.caps.iter().any(|c| caps.contains(c))
            || exc.arches.iter().any(|a| a == moby_arch)
        {
            continue;
        }
        if let Some(min) = &inc.min_kernel {
            // Cairn's kernels (6.1) are newer than any minimum the profile names today (4.8);
            // a newer one in an updated profile must be checked against the image's kernel.
            if kernel_version(min).is_none_or(|v| v > MAX_KNOWN_MIN_KERNEL) {
                return Err(bad(format!(
                    "an entry needs kernel {min}; check this profile against the image's kernel"
                )));
            }
        }
        let mut syscall =
            json!({ "names": entry.names, "action": entry.action, "args": entry.args });
        if let Some(errno) = entry.errno_ret {
            syscall["errnoRet"] = json!(errno);
        }
        syscalls.push(syscall);
    }
    let seccomp = json!({
        "defaultAction": profile.default_action,
        "defaultErrnoRet": profile.default_errno_ret,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    serde_json::from_value(seccomp).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &LinuxSeccomp) -> Vec<String> {
        let json = serde_json::to_value(profile).unwrap();
        json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["action"] == "SCMP_ACT_ALLOW" && s["args"].as_array().is_none_or(|a| a.is_empty())
            })
            .flat_map(|s| {
                s["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
            })
            .collect()
    }

    #[test]
    fn dockers_profile_resolves_for_dockers_capabilities() {
        let caps = super::super::oci::default_capabilities().unwrap();
        let profile = default_profile(&caps).unwrap();
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        let native = native_arch().unwrap().0;
        assert_eq!(json["architectures"][0], native);
        let allowed = allowed(&profile);
        for name in ["read", "write", "execve", "clone3", "chroot", "ptrace"] {
            // clone3 is answered with ENOSYS, not allowed.
            assert_eq!(
                allowed.iter().any(|a| a == name),
                name != "clone3",
                "{name}"
            );
        }
        // What needs capabilities the container lacks stays refused.
        for name in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "add_key",
            "init_module",
            "reboot",
            "kexec_load",
            "open_by_handle_at",
            "perf_event_open",
        ] {
            assert!(!allowed.iter().any(|a| a == name), "{name} allowed");
        }
        // clone only without namespace flags; socket never AF_VSOCK.
        let syscalls = json["syscalls"].as_array().unwrap();
        let clone = syscalls.iter().find(|s| s["names"][0] == "clone").unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        let clone3 = syscalls.iter().find(|s| s["names"][0] == "clone3").unwrap();
        assert_eq!(
            (clone3["action"].as_str(), clone3["errnoRet"].as_u64()),
            (Some("SCMP_ACT_ERRNO"), Some(38))
        );
        let socket = syscalls.iter().find(|s| s["names"][0] == "socket").unwrap();
        assert_eq!(
            (
                socket["args"][0]["value"].as_u64(),
                socket["args"][0]["op"].as_str()
            ),
            (Some(40), Some("SCMP_CMP_NE"))
        );
    }

    #[test]
    fn kernel_versions_compare_as_numbers() {
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
        assert!(kernel_version("4.10").unwrap() > MAX_KNOWN_MIN_KERNEL);
        assert_eq!(kernel_version("five"), None);
    }

    #[test]
    fn sys_admin_would_lift_the_namespace_rules() {
        let mut caps = super::super::oci::default_capabilities().unwrap();
        caps.insert(Capability::SysAdmin);
        let allowed = allowed(&default_profile(&caps).unwrap());
        assert!(allowed.iter().any(|a| a == "unshare") && allowed.iter().any(|a| a == "clone3"));
    }
}
