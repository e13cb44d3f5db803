//! A container in its app's user namespace, against a real containerd + runc: root inside is an
//! unprivileged id on the host, the image's files, a volume made before and the secret and
//! config files belong to the app's range (with the owners and modes the Compose file gives,
//! written under the run dir, not the data dir), and a network namespace made in the user
//! namespace lets runc mount `/sys` and set a `net.*` sysctl.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use cairn_compose::AppSpec;
use cairn_runtime::container::{self, NewContainer};
use cairn_runtime::image::{no_progress, pull_image, PullOptions};
use cairn_runtime::userns::{self, AppUserns, IdRange};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A `nodev,nosuid,noatime` tmpfs on a directory (as `/data` on a device), unmounted on drop.
struct DataMount(std::path::PathBuf);

impl DataMount {
    fn new(dir: &std::path::Path) -> DataMount {
        use rustix::mount::MountFlags;
        rustix::mount::mount(
            "tmpfs",
            dir,
            "tmpfs",
            MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOATIME,
            c"mode=0755",
        )
        .unwrap();
        DataMount(dir.to_path_buf())
    }
}

impl Drop for DataMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// The uid line of a process's status: real, effective, saved, file system.
fn host_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Whether a file under `dir`, outside directories named `logs`, holds `needle`.
fn holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => e.file_name() != "logs" && holds(&path, needle),
            Ok(t) if t.is_file() => std::fs::read(&path)
                .is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle)),
            _ => false,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_in_an_apps_user_namespace_is_an_unprivileged_host_id() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let img = common::busybox_image(&[]);
        common::push(&env.registry.url(), "cairn/box", "1", &img, None).await;
        let reference = format!("{}/cairn/box:1", env.registry.host());
        let image = pull_image(&env.ctr, &reference, &PullOptions::default(), &no_progress)
            .await
            .unwrap();
        let yaml = format!(
            r#"
services:
  main:
    image: {reference}
    command: ["sh", "-c", "cat /proc/self/uid_map; stat -c 'bin %u' /bin/busybox; stat -c 'old %u' /data/old; echo new > /data/new; cat /run/secrets/token; echo; stat -c 'token %u %g %a' /run/secrets/token; stat -c 'key %u %g %a' /etc/app/key; cat /etc/app/key; echo; stat -c 'conf %u %g %a' /etc/app/site.conf; cat /etc/app/site.conf; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; ls /sys/class/net; echo done; exec sleep 60"]
    volumes: ["store:/data"]
    secrets:
      - token
      - {{source: token, target: /etc/app/key, uid: 1000, gid: "1001", mode: 0400}}
    configs:
      - {{source: site.conf, target: /etc/app/site.conf, uid: 33, mode: "0440"}}
    sysctls: {{net.ipv4.ip_unprivileged_port_start: "80"}}
secrets:
  token: {{}}
configs:
  site.conf:
    content: "site=${{CAIRN_SITE}}\n"
"#
        );
        let variables = BTreeMap::from([("CAIRN_SITE".to_string(), "berlin-1".to_string())]);
        let app = AppSpec::parse_with_variables("compose.yml", "uns", &yaml, &variables).unwrap();
        let cfg = common::runtime_config(&env);
        // App data on a file system mounted as a device mounts /data: in a user namespace these
        // options are locked, and every bind mount of it must keep them.
        std::fs::create_dir_all(&cfg.data_dir).unwrap();
        let _data = DataMount::new(&cfg.data_dir);
        let range = IdRange::nth(7).unwrap();
        let scratch = env.containerd.scratch_dir("ns");
        let app_userns = AppUserns {
            path: scratch.join("userns-uns"),
            range,
        };
        userns::create(&app_userns.path, range).unwrap();
        let netns = scratch.join("netns-uns_main");
        userns::create_netns_in(&app_userns.path, &netns).unwrap();
        // A volume written before the app had a range, as host root.
        let volume = cfg.volume_dir("uns", "store");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("old"), "old").unwrap();

        let secrets = BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]);
        let new = NewContainer {
            app: "uns",
            service: "main",
            spec: &app.services["main"],
            image: &image,
            labels: HashMap::from([("cairn.spec-hash".to_string(), "h1".to_string())]),
            secrets: &secrets,
            configs: &app.configs,
            netns: Some(netns.clone()),
            hosts_file: None,
            userns: Some(app_userns.clone()),
        };
        let id = container::create_container(&env.ctr, &cfg, &new)
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let log = cfg.service_log("uns", "main", &Default::default());
        let pid = container::start_task(&env.ctr, &cfg, &id, &log)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = std::fs::read_to_string(&log.path).unwrap_or_default();
            if text.contains("done") {
                break text;
            }
            assert!(Instant::now() < deadline, "log: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let start = range.host_start;
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields[..3], ["0", &start.to_string(), "65536"], "{text}");
        assert!(text.contains("bin 0\n"), "image files belong to container root: {text}");
        assert!(text.contains("old 0\n"), "the old volume was moved into the range: {text}");
        assert!(text.contains("s3cret"), "container root reads its secret: {text}");
        assert!(text.contains("token 0 0 444\n"), "the short syntax's defaults: {text}");
        assert!(
            text.contains("key 1000 1001 400\ns3cret\n"),
            "the long syntax's target, owner and mode: {text}"
        );
        assert!(
            text.contains("conf 33 0 440\nsite=berlin-1\n"),
            "the config, templated: {text}"
        );
        assert!(text.contains("\n80\n"), "the sysctl was set in its own namespaces: {text}");
        assert!(
            text.contains("\n80\nlo\ndone\n"),
            "its /sys shows its own network namespace, with only lo: {text}"
        );
        // On the host, container root is the range's first id, and so are its files.
        assert!(host_uids(pid).iter().all(|u| *u == start), "{:?}", host_uids(pid));
        assert_eq!(std::fs::metadata(volume.join("new")).unwrap().uid(), start);
        assert_eq!(std::fs::metadata(volume.join("old")).unwrap().uid(), start);
        assert_eq!(std::fs::metadata(&volume).unwrap().uid(), start);
        // The secret's files are on the host under the run dir, in the range; none is in the
        // data dir.
        let files = cfg.service_files_dir("uns", "main");
        assert!(!files.starts_with(&cfg.data_dir), "{}", files.display());
        let key = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::metadata(p).unwrap().uid() == start + 1000)
            .expect("the key's file, owned by container id 1000 of the range");
        assert_eq!(std::fs::read(&key).unwrap(), b"s3cret");
        assert_eq!(std::fs::metadata(&key).unwrap().gid(), start + 1001);
        // The log holds it too: the command prints it.
        assert!(
            !holds(&cfg.data_dir, b"s3cret"),
            "a secret value was written to the data dir"
        );

        container::remove_container(&env.ctr, &id, Duration::from_millis(500))
            .await
            .unwrap();
        userns::remove(&netns).unwrap();
        userns::remove(&app_userns.path).unwrap();
    })
    .await
    .expect("test timed out");
}
