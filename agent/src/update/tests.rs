//! Unit tests of the update health gate and of where an interrupted update resumes.

use cairn_proto::v1::{App, AppStatus, DesiredState, ServiceHealth, ServiceState, ServiceStatus};

use super::record::{Stage, Target};
use super::{apps_healthy, first_stage};

fn desired(apps: &[(&str, u64)]) -> DesiredState {
    DesiredState {
        revision: 7,
        config: Default::default(),
        apps: apps
            .iter()
            .map(|(name, generation)| App {
                name: name.to_string(),
                compose_yaml: String::new(),
                generation: *generation,
                secrets: Vec::new(),
                variables: Default::default(),
            })
            .collect(),
        os: None,
    }
}

fn seen(
    name: &str,
    generation: u64,
    revision: u64,
    services: &[(ServiceState, ServiceHealth)],
) -> AppStatus {
    AppStatus {
        name: name.into(),
        generation,
        desired_revision: revision,
        error: String::new(),
        services: services
            .iter()
            .enumerate()
            .map(|(i, (state, health))| ServiceStatus {
                name: format!("s{i}"),
                state: *state as i32,
                health: *health as i32,
                restarts: 0,
                message: String::new(),
            })
            .collect(),
    }
}

#[test]
fn health_gate_needs_every_app_running_and_healthy_for_this_revision() {
    use ServiceHealth as H;
    use ServiceState as S;
    assert_eq!(
        apps_healthy(&desired(&[]), &[]),
        Ok(()),
        "no apps: nothing to wait for"
    );
    let want = desired(&[("web", 2)]);
    assert!(apps_healthy(&want, &[])
        .unwrap_err()
        .to_string()
        .contains("not reported"));
    let old_generation = seen("web", 1, 7, &[(S::Running, H::Healthy)]);
    assert!(apps_healthy(&want, &[old_generation])
        .unwrap_err()
        .to_string()
        .contains("not reconciled"));
    let old_revision = seen("web", 2, 6, &[(S::Running, H::Healthy)]);
    assert!(apps_healthy(&want, &[old_revision])
        .unwrap_err()
        .to_string()
        .contains("not reconciled"));
    let unhealthy = seen(
        "web",
        2,
        7,
        &[(S::Running, H::Healthy), (S::Running, H::Unhealthy)],
    );
    assert!(apps_healthy(&want, &[unhealthy])
        .unwrap_err()
        .to_string()
        .contains("s1"));
    let starting = seen("web", 2, 7, &[(S::Running, H::Starting)]);
    assert!(apps_healthy(&want, &[starting]).is_err());
    let exited = seen("web", 2, 7, &[(S::Exited, H::None)]);
    assert!(apps_healthy(&want, &[exited]).is_err());
    let mut refused = seen("web", 2, 7, &[]);
    refused.error = "refused by this agent".into();
    assert!(apps_healthy(&want, &[refused])
        .unwrap_err()
        .to_string()
        .contains("refused"));
    let good = seen(
        "web",
        2,
        7,
        &[(S::Running, H::Healthy), (S::Running, H::None)],
    );
    assert_eq!(apps_healthy(&want, &[good]), Ok(()));
}

#[test]
fn downgrades_need_force_and_the_running_version_is_already_there() {
    let target = |version: &str, allow_downgrade: bool| Target {
        version: version.into(),
        sha256: "ab".repeat(32),
        size: 1,
        rollout_id: "ro_1".into(),
        allow_downgrade,
        health_deadline_s: 600,
    };
    assert_eq!(
        first_stage(&target("0.2.0", false), "0.1.0"),
        Stage::Downloading
    );
    assert_eq!(
        first_stage(&target("0.1", false), "0.1.0"),
        Stage::Succeeded
    );
    let refused = first_stage(&target("0.1.0", false), "0.2.0");
    assert!(
        matches!(&refused, Stage::Refused { error } if error.contains("allow_downgrade")),
        "{refused:?}"
    );
    assert_eq!(
        first_stage(&target("0.1.0", true), "0.2.0"),
        Stage::Downloading
    );
    assert!(matches!(
        first_stage(&target("latest", true), "0.2.0"),
        Stage::Refused { .. }
    ));
}
