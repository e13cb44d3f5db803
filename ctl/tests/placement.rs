//! `cairnctl site|region|device label|device site|deployment` against a real central with a
//! simulated device (real mutual-TLS enrollment): commands reach central, tables show the
//! placement, and central's refusals reach the operator intact. (Scheduling itself is tested in
//! central/tests/placement.rs.)

use cairn_api::DeploymentList;
use cairn_testsupport::central::{SimDevice, TestCentral};
use support::Ctl;

mod support;

const WEB: &str = "services:\n  web:\n    image: registry.example:5000/web:1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_regions_labels_and_deployments_from_the_command_line() {
    let central = TestCentral::start().await;
    let ctl = Ctl::new(&central);
    assert_eq!(ctl.ok(&["site", "list"]), "no sites\n");
    let out = ctl.ok(&[
        "site",
        "create",
        "cape-town",
        "--lat",
        "-33.92",
        "--lon",
        "18.42",
        "--label",
        "country=za",
    ]);
    assert_eq!(out, "site cape-town created\n");
    let out = ctl.run(&["site", "create", "pole", "--lat", "-91", "--lon", "0"]);
    assert!(
        !out.ok && out.stderr.contains("latitude -91"),
        "{}",
        out.stderr
    );

    let out = ctl.ok(&[
        "region", "create", "cape", "--point", "-35,17", "--point", "-35,20", "--point", "-32,20",
        "--point", "-32,17",
    ]);
    assert_eq!(out, "region cape created with 4 points\n");
    assert!(ctl.ok(&["region", "list"]).contains("cape"));

    let (_, token) = central.token("auto", None, None);
    let sim = SimDevice::new("SER-CTL-PLACE");
    let id = sim.enroll(&central, &token).await.unwrap().device_id;
    let out = ctl.ok(&["device", "site", &id, "cape-town"]);
    assert_eq!(out, format!("device {id} is at site cape-town\n"));
    let out = ctl.ok(&["device", "label", &id, "gpu=yes"]);
    assert_eq!(out, format!("device {id} labels: gpu=yes\n"));
    let out = ctl.run(&["device", "site", &id, "mars"]);
    assert!(
        !out.ok && out.stderr.contains("unknown site"),
        "{}",
        out.stderr
    );
    // A site created with its devices; an unknown device creates nothing.
    let out = ctl.run(&[
        "site", "create", "durban", "--lat", "-29.86", "--lon", "31.02", "--device", &id,
        "--device", "dev_nope",
    ]);
    assert!(!out.ok && out.stderr.contains("dev_nope"), "{}", out.stderr);
    assert!(!ctl.ok(&["site", "list"]).contains("durban"));
    let out = ctl.ok(&[
        "site", "create", "durban", "--lat", "-29.86", "--lon", "31.02", "--device", &id,
    ]);
    assert_eq!(out, "site durban created with 1 devices\n");
    assert!(ctl.ok(&["site", "show", "durban"]).contains(&id));
    ctl.ok(&["device", "site", &id, "cape-town"]);
    ctl.ok(&["site", "rm", "durban"]);
    let shown = ctl.ok(&["site", "show", "cape-town"]);
    assert!(
        shown.contains(&id) && shown.contains("country=za"),
        "{shown}"
    );
    assert!(ctl.ok(&["site", "list"]).contains("cape-town"));

    let compose = central.dir.path().join("web.yml");
    std::fs::write(&compose, WEB).unwrap();
    let file = compose.to_str().unwrap();
    let out = ctl.ok(&[
        "deployment",
        "create",
        "-f",
        file,
        "--region",
        "cape",
        "--within",
        "-33.9,18.4,50",
        "--device-label",
        "gpu=yes",
        "--dry-run",
    ]);
    assert!(
        out.starts_with("dry run: deployment web would run on")
            && out.contains("cape-town")
            && out.contains(&id),
        "{out}"
    );
    assert_eq!(ctl.ok(&["deployment", "list"]), "no deployments\n");
    let out = ctl.ok(&[
        "deployment",
        "create",
        "-f",
        file,
        "--sites-label",
        "country=za",
        "--hosts-per-site",
        "2",
    ]);
    assert!(
        out.contains("deployment web created") && out.contains(&id),
        "{out}"
    );
    assert!(out.contains("site cape-town: 1 of 2 hosts"), "{out}");
    let shown = ctl.ok(&["deployment", "show", "web"]);
    assert!(
        shown.contains(&id) && shown.contains("no report"),
        "{shown}"
    );
    let listed: DeploymentList = ctl.read(&["deployment", "list"]);
    assert_eq!(listed.deployments[0].hosts, 1);

    // Variables for the deployment's Compose file, per scope.
    assert_eq!(
        ctl.ok(&["variable", "set", "GREETING", "hi", "--deployment", "web"]),
        "variable GREETING set for deployment web, sent to 1 devices\n"
    );
    assert_eq!(
        ctl.ok(&[
            "variable",
            "set",
            "GREETING",
            "howzit",
            "--site",
            "cape-town"
        ]),
        "variable GREETING set for site cape-town, sent to 1 devices\n"
    );
    let out = ctl.run(&["variable", "set", "CAIRN_SITE", "x", "--fleet"]);
    assert!(
        !out.ok && out.stderr.contains("built-in variables"),
        "{}",
        out.stderr
    );
    let out = ctl.run(&["variable", "set", "A", "x"]);
    assert!(!out.ok && out.stderr.contains("--fleet"), "{}", out.stderr);
    let listed = ctl.ok(&["variable", "list", "--site", "cape-town"]);
    assert!(
        listed.contains("site cape-town") && listed.contains("howzit"),
        "{listed}"
    );
    assert_eq!(
        ctl.ok(&["variable", "rm", "GREETING", "--site", "cape-town"]),
        "variable GREETING removed from site cape-town, sent to 1 devices\n"
    );
    assert_eq!(ctl.ok(&["variable", "list", "--fleet"]), "no variables\n");
    let out = ctl.run(&["deployment", "create", "-f", file, "--site", "nowhere"]);
    assert!(
        !out.ok && out.stderr.contains("a deployment named \"web\" exists"),
        "{}",
        out.stderr
    );
    assert_eq!(
        ctl.ok(&["deployment", "rm", "web"]),
        "deployment web removed from 1 devices\n"
    );

    let out = ctl.run(&["site", "rm", "cape-town"]);
    assert!(
        !out.ok && out.stderr.contains("still has devices"),
        "{}",
        out.stderr
    );
    ctl.ok(&["device", "site", &id, "--none"]);
    assert_eq!(
        ctl.ok(&["site", "rm", "cape-town"]),
        "site cape-town removed\n"
    );
    assert_eq!(ctl.ok(&["region", "rm", "cape"]), "region cape removed\n");
}
