//! `cairnctl rollout` against a real central: listing, showing, and the errors central gives
//! for an unknown bundle or rollout reach the operator intact. (Rollouts with real bundles and
//! devices are tested in central/tests/rollouts.rs.)

use cairn_api::RolloutList;
use cairn_testsupport::central::TestCentral;
use support::Ctl;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_commands_reach_central() {
    let central = TestCentral::start().await;
    let ctl = Ctl::new(&central);
    assert_eq!(ctl.ok(&["rollout", "list"]), "no rollouts\n");
    let listed: RolloutList = ctl.read(&["rollout", "list"]);
    assert!(listed.rollouts.is_empty());

    let sha = "ab".repeat(32);
    let out = ctl.run(&["rollout", "create", "--bundle", &sha, "--all", "--dry-run"]);
    assert!(
        !out.ok && out.stderr.contains("no bundle with SHA-256") && out.stderr.contains("upload"),
        "{}",
        out.stderr
    );
    let out = ctl.run(&["rollout", "show", "rol_missing"]);
    assert!(
        !out.ok && out.stderr.contains("no rollout with id rol_missing"),
        "{}",
        out.stderr
    );
    let out = ctl.run(&["rollout", "pause", "rol_missing"]);
    assert!(
        !out.ok && out.stderr.contains("rol_missing"),
        "{}",
        out.stderr
    );
    let out = ctl.run(&["rollout", "create", "--bundle", &sha]);
    assert!(!out.ok, "a target (--all, --device or --match) is required");
}
