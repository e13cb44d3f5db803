//! Central's PostgreSQL connection over TLS (issue 20), against the test cluster of
//! `dev/test-postgres.sh`, which speaks TLS only with a certificate from its own test CA.
//!
//! Needs PostgreSQL: runs when `CAIRN_TEST_DATABASE_URL` is set (the second run of `cargo
//! xtask test`); on the SQLite run it says so and returns.

use cairn_central::store::{self, StoreError};
use cairn_testsupport::central::DATABASE_URL_ENV;

/// Whether the session of `url` is encrypted, per the server (or why it could not connect).
fn session_ssl(url: &str) -> Result<bool, StoreError> {
    let url = url.to_owned();
    // On a plain thread: the sync client must not run inside a caller's async runtime.
    std::thread::spawn(move || {
        let conn = store::connect_postgres(&url)?;
        let rows = conn.query(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            store::db::params![],
        )?;
        let ssl: String = rows[0].get(0)?;
        Ok(ssl == "true")
    })
    .join()
    .unwrap()
}

#[test]
fn central_reaches_postgres_over_verified_tls_and_refuses_a_stranger() {
    let Some(admin) = std::env::var(DATABASE_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("postgres TLS test: {DATABASE_URL_ENV} is not set (cargo xtask test runs this on PostgreSQL)");
        return;
    };
    let (base, query) = admin.split_once('?').expect(
        "the test URL has sslmode=verify-full&sslrootcert=...: start the cluster with dev/test-postgres.sh",
    );
    let ca_file = query
        .split('&')
        .find_map(|p| p.strip_prefix("sslrootcert="))
        .expect("the test URL names its CA file (dev/test-postgres.sh)");
    // The server's certificate is for 127.0.0.1 and localhost; reach the same server under a
    // name it is not for (hostaddr carries the address).
    assert!(
        base.contains("@127.0.0.1:"),
        "{}",
        store::redact_url(&admin)
    );
    let other_name = base.replace("@127.0.0.1:", "@db.invalid:");

    // verify-full with the right CA, the login bound to the certificate (channel binding).
    let good = format!("{base}?sslmode=verify-full&sslrootcert={ca_file}&channel_binding=require");
    assert!(session_ssl(&good).unwrap(), "verify-full must be encrypted");
    // require without a CA file: encrypted, nothing checked (libpq's meaning).
    assert!(session_ssl(&format!("{base}?sslmode=require&channel_binding=require")).unwrap());

    // A certificate from another CA is refused, before any login.
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("other-ca.pem");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(&stranger, other.cert.pem()).unwrap();
    let err = session_ssl(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        stranger.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        !err.contains("cairn_test:cairn_test"),
        "no password in {err}"
    );
    // verify-ca with it too.
    let err = session_ssl(&format!(
        "{base}?sslmode=verify-ca&sslrootcert={}",
        stranger.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The right CA under the wrong name: verify-full refuses, verify-ca accepts.
    let err = session_ssl(&format!(
        "{other_name}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca_file}"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("not valid for name \"db.invalid\""), "{err}");
    assert!(session_ssl(&format!(
        "{other_name}?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca_file}"
    ))
    .unwrap());

    // sslmode=disable really sends no TLS: this cluster refuses plain text.
    let err = session_ssl(&format!("{base}?sslmode=disable"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no encryption"), "{err}");
}
