//! The bare runtime: images pushed for both paths, a cold pull, and the same containers created
//! and started straight through cairn-runtime (the baseline of every row).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use cairn_compose::{AppSpec, NetworkMode};
use cairn_runtime::container::{self, NewContainer, RuntimeConfig, TaskStatus};
use cairn_runtime::containerd::Containerd as Ctr;
use cairn_runtime::image;
use cairn_runtime::network::Networks;
use cairn_runtime::userns;
use cairn_testsupport::images::{self as test_images, TestImage};
use serde_json::{json, Value};

use crate::Bench;

/// Push the agent's image and the bare runtime's, whose base layer is compressed differently
/// (a different blob, the same content) so each namespace's pull is cold.
pub async fn push_images(bench: &Bench) -> (String, String) {
    let agent_image = test_images::busybox_image(&[("etc/bench", "agent\n")]);
    test_images::push(&bench.registry_url, "bench/agent", "1", &agent_image, None).await;
    let bare_image = recompress_base(test_images::busybox_image(&[("etc/bench", "bare\n")]));
    test_images::push(&bench.registry_url, "bench/bare", "1", &bare_image, None).await;
    let host = &bench.registry_host;
    (
        format!("{host}/bench/agent:1"),
        format!("{host}/bench/bare:1"),
    )
}

fn recompress_base(mut image: TestImage) -> TestImage {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(image.layers[0].0.as_slice()),
        &mut raw,
    )
    .unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&raw).unwrap();
    image.layers[0].0 = enc.finish().unwrap();
    let mut manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["layers"][0]["digest"] = json!(test_images::digest(&image.layers[0].0));
    manifest["layers"][0]["size"] = json!(image.layers[0].0.len());
    image.manifest = serde_json::to_vec(&manifest).unwrap();
    image
}

/// Create and start the services of `yaml` straight through cairn-runtime (attaching them to
/// the app's network unless `network_mode: host`), as the reconciler does, with or without the
/// confinement; time it; remove them.
pub async fn bare_start(
    bench: &Bench,
    ctr: &Ctr,
    image: &image::ImageInfo,
    app: &str,
    yaml: &str,
    confined: bool,
) -> Result<Duration, String> {
    let spec = AppSpec::parse("compose.yml", app, yaml).map_err(|e| e.to_string())?;
    let mut cfg = RuntimeConfig::new(&bench.bare_data_dir);
    cfg.runc_root = Some(bench.runc_root.clone());
    cfg.stop_grace = Duration::from_secs(2);
    cfg.network = bench.bare_network.clone();
    cfg.unconfined_for_benchmark = !confined;
    // The agent's binary is the log writer on a device; here the one cargo built.
    cfg.log_writer = env!("CARGO_BIN_EXE_cairn-agent").into();
    let mut networks = Networks::new(cfg.network.clone());
    let secrets = BTreeMap::new();
    let private = spec
        .services
        .values()
        .any(|s| s.network_mode == NetworkMode::Private);
    let started = Instant::now();
    let result = async {
        let info = image::image_info(ctr, &image.name)
            .await
            .map_err(|e| e.to_string())?;
        // Confined as the agent runs apps: in the app's user namespace (the image's remapped
        // copy is made by the first start and reused by later ones, as on a device).
        let userns = if confined && userns::app_wants_userns(&spec) {
            let mut namespaces = userns::AppNamespaces::new(
                cfg.userns_ranges_path(),
                cfg.network.run_dir.join("userns"),
            );
            Some(namespaces.ensure(app).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let net = if private {
            let net = networks.app_network(app).map_err(|e| e.to_string())?;
            networks
                .write_app_hosts(&spec, &net, &cfg.app_hosts_path(app))
                .map_err(|e| e.to_string())?;
            Some(net)
        } else {
            None
        };
        for (name, svc) in &spec.services {
            let id = container::container_id(app, name);
            let new = NewContainer {
                app,
                service: name,
                spec: svc,
                image: &info,
                labels: HashMap::new(),
                secrets: &secrets,
                configs: &spec.configs,
                netns: net.as_ref().map(|_| cfg.network.netns_path(&id)),
                hosts_file: net.as_ref().map(|_| cfg.app_hosts_path(app)),
                userns: userns.clone(),
            };
            container::create_container(ctr, &cfg, &new)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(net) = &net {
                networks
                    .attach(
                        net,
                        name,
                        &id,
                        &svc.ports,
                        userns.as_ref().map(|u| u.path.as_path()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                networks
                    .write_app_hosts(&spec, net, &cfg.app_hosts_path(app))
                    .map_err(|e| e.to_string())?;
            }
            container::start_task(
                ctr,
                &cfg,
                &id,
                &cfg.service_log(app, name, &Default::default()),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(started.elapsed())
    }
    .await;
    // Every container must still be running (not just started), then everything goes.
    let mut problem = result.as_ref().err().cloned();
    for c in container::list_containers(ctr)
        .await
        .map_err(|e| e.to_string())?
    {
        if problem.is_none() && c.task.as_ref().map(|t| t.status) != Some(TaskStatus::Running) {
            problem = Some(format!("{} is not running: {:?}", c.id, c.task));
        }
        container::remove_container(ctr, &c.id, cfg.stop_grace)
            .await
            .map_err(|e| e.to_string())?;
    }
    if private {
        networks.remove_app(app).await.map_err(|e| e.to_string())?;
    }
    match problem {
        Some(p) => Err(p),
        None => result,
    }
}
