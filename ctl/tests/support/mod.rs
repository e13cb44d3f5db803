//! The cairnctl binary as the tests run it: against a [`TestCentral`], with its CA and the admin
//! token in files, through the environment variables an operator would set.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use cairn_testsupport::central::TestCentral;
use serde_json::Value;

/// cairnctl pointed at one central.
pub struct Ctl {
    pub url: String,
    pub ca: PathBuf,
    pub token_file: PathBuf,
}

/// What one cairnctl run did.
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn new(central: &TestCentral) -> Self {
        let ca = central.dir.path().join("ca.pem");
        std::fs::write(&ca, &central.ca_pem).unwrap();
        let token_file = central.dir.path().join("token");
        std::fs::write(&token_file, format!("{}\n", central.admin)).unwrap();
        Self {
            url: central.rest_url(""),
            ca,
            token_file,
        }
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        let output = tokio::task::block_in_place(|| {
            Command::new(env!("CARGO_BIN_EXE_cairnctl"))
                .args(args)
                .env("CAIRN_CENTRAL", &self.url)
                .env("CAIRN_CA", &self.ca)
                .env("CAIRN_TOKEN_FILE", &self.token_file)
                .env_remove("CAIRN_TOKEN")
                .output()
                .expect("cairnctl runs")
        });
        Outcome {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.ok, "cairnctl {args:?} failed: {}", out.stderr);
        out.stdout
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("--json prints JSON")
    }

    /// The `--json` output (central's answer) read as a cairn-api type.
    pub fn read<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "cairnctl --json {args:?} does not read as {}: {e}\n{text}",
                std::any::type_name::<T>()
            )
        })
    }
}
