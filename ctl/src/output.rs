//! What cairnctl prints: aligned tables, `key: value` details, one-line confirmations, and the
//! server's JSON re-indented for `--json`.
//!
//! Every string that came from central goes through [`printable`] before it reaches the terminal,
//! so a hostile host name cannot move the cursor or recolour the screen.

use std::fmt::{self, Write as _};

use cairn_api::{
    ApiToken, AppDeployed, AppList, AppRemoved, AttestationSummary, AuditEvent, Claim, ClaimKind,
    CreatedApiToken, CreatedEnrollmentToken, Device, DeviceAttestation, DeviceWithHost,
    EnrollmentToken, Timestamp,
};

/// Shown for a null or empty value.
pub const NONE: &str = "-";

/// Spaces between table columns.
const COLUMN_GAP: usize = 3;

/// Escapes control characters (newlines, terminal escapes) so text stays on one line and inert.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `value`, or [`NONE`] when absent.
pub fn or_none(value: Option<&str>) -> &str {
    value.unwrap_or(NONE)
}

/// A time as central sent it (RFC 3339), or [`NONE`] when absent.
pub fn time_or_none(at: Option<&Timestamp>) -> String {
    at.map_or_else(|| NONE.to_owned(), Timestamp::to_string)
}

fn dash_if_empty(value: &str) -> &str {
    if value.is_empty() {
        NONE
    } else {
        value
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// A table with a header row and columns padded to line up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|title| (*title).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Cells are made [`printable`], empty cells show [`NONE`], and a row shorter
    /// than the header is filled with [`NONE`] (extra cells are dropped).
    pub fn push_row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.header.len())
            .map(|cell| match cell.as_ref() {
                "" => NONE.to_owned(),
                text => printable(text),
            })
            .collect();
        row.resize(self.header.len(), NONE.to_owned());
        self.rows.push(row);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Number of rows (the header not counted).
    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

impl fmt::Display for Table {
    /// One line per row, header first, each line ending in `\n`, no trailing spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|column| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[column] - cell.chars().count() + COLUMN_GAP;
                    let _ = write!(line, "{cell}{:pad$}", "");
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `key: value` lines with the values lined up; values are made [`printable`], empty ones show
/// [`NONE`].
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in pairs {
        let value = if value.is_empty() {
            NONE.to_owned()
        } else {
            printable(value)
        };
        let key = format!("{key}:");
        let _ = writeln!(text, "{key:width$} {value}");
    }
    text
}

/// Re-indents a JSON document (2 spaces, one member per line) without reordering keys or
/// touching strings and numbers, so `--json` shows the body as central sent it.
///
/// `raw` must be valid JSON; cairnctl checks that before printing.
pub fn pretty_json(raw: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.next_if(|next| next.is_whitespace()).is_some() {}
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.next_if_eq(&close).is_some() {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Table of enrollment tokens.
pub fn enrollment_token_table(tokens: &[EnrollmentToken]) -> Table {
    let mut table = Table::new(&[
        "ID", "NAME", "POLICY", "KEYS", "USES", "MAX-USES", "EXPIRES", "REVOKED", "CREATED",
    ]);
    for token in tokens {
        table.push_row([
            token.id.as_str(),
            &token.name,
            token.policy.as_str(),
            key_rule(token),
            &token.uses.to_string(),
            &token
                .max_uses
                .map_or_else(|| NONE.to_owned(), |n| n.to_string()),
            &token.expires_at.to_string(),
            yes_no(token.revoked),
            &token.created_at.to_string(),
        ]);
    }
    table
}

/// Which device keys a token admits: `tpm` (proven TPM only) or `tpm+software`.
fn key_rule(token: &EnrollmentToken) -> &'static str {
    if token.require_tpm {
        "tpm"
    } else {
        "tpm+software"
    }
}

/// Confirmation of a new enrollment token, with its secret and the warning that it is shown once.
pub fn enrollment_token_created(created: &CreatedEnrollmentToken) -> String {
    let token = &created.token;
    format!(
        "created enrollment token {} '{}' (policy {}, keys {}, expires {}, max uses {})\n\
         secret: {}\n\
         This secret is shown only once: put it in the fleet recipe now; central cannot show it again.\n",
        printable(&token.id),
        printable(&token.name),
        printable(token.policy.as_str()),
        key_rule(token),
        token.expires_at,
        token
            .max_uses
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        printable(&created.secret),
    )
}

/// Confirmation of a revoked enrollment token.
pub fn enrollment_token_revoked(token: &EnrollmentToken) -> String {
    format!(
        "revoked enrollment token {} '{}': devices can no longer enroll with it\n",
        printable(&token.id),
        printable(&token.name)
    )
}

/// Table of devices.
pub fn device_table<'a>(devices: impl IntoIterator<Item = &'a DeviceWithHost>) -> Table {
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "HOSTNAME",
        "SERIAL",
        "KEY",
        "ATTEST",
        "ONLINE",
        "LAST-SEEN",
        "AGENT",
        "OS",
    ]);
    for listed in devices {
        let device = &listed.device;
        table.push_row([
            device.id.as_str(),
            device.status.as_str(),
            &device.hostname,
            &device.serial,
            device.key_storage.as_str(),
            listed.attestation.state.as_str(),
            yes_no(device.online),
            &time_or_none(device.last_seen_at.as_ref()),
            &device.agent_version,
            &device.os_version,
        ]);
    }
    table
}

/// Every field of a device as `key: value` lines.
pub fn device_details(device: &Device) -> String {
    let optional = |value: &Option<String>| or_none(value.as_deref()).to_owned();
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let desired_os = device.desired_os.as_ref().map_or_else(
        || NONE.to_owned(),
        |os| {
            format!(
                "{} (bundle {}, rollout {}{})",
                os.version,
                os.bundle_sha256,
                os.rollout_id,
                if os.allow_downgrade {
                    ", downgrade allowed"
                } else {
                    ""
                }
            )
        },
    );
    key_values(&[
        ("id", device.id.clone()),
        ("status", device.status.to_string()),
        ("hostname", device.hostname.clone()),
        ("serial", device.serial.clone()),
        ("tpm_ek_sha256", device.tpm_ek_sha256.clone()),
        ("key_storage", device.key_storage.to_string()),
        ("agent_version", device.agent_version.clone()),
        ("os_version", device.os_version.clone()),
        ("token_id", device.token_id.clone()),
        ("created_at", device.created_at.to_string()),
        ("approved_at", time_or_none(device.approved_at.as_ref())),
        ("last_seen_at", time_or_none(device.last_seen_at.as_ref())),
        ("online", yes_no(device.online).to_owned()),
        ("cert_serial", optional(&device.cert_serial)),
        (
            "cert_expires_at",
            time_or_none(device.cert_expires_at.as_ref()),
        ),
        ("desired_revision", device.desired_revision.to_string()),
        ("desired_os", desired_os),
        ("config", pairs(&device.config)),
        ("site", optional(&device.site)),
        ("labels", pairs(&device.labels)),
        (
            "wipe_requested_at",
            time_or_none(device.wipe_requested_at.as_ref()),
        ),
        ("wiped_at", time_or_none(device.wiped_at.as_ref())),
    ])
}

/// A device's attestation summary as `attestation*: value` lines (for `device show`).
pub fn attestation_summary(summary: &AttestationSummary) -> String {
    key_values(&[
        ("attestation", summary.state.to_string()),
        (
            "attestation.detail",
            summary.detail.clone().unwrap_or_default(),
        ),
        (
            "attestation.verified_at",
            time_or_none(summary.verified_at.as_ref()),
        ),
    ])
}

/// A device's attestation: its state, the settings it is checked with, the pinned firmware
/// PCRs, the accepted UKI values, and what to run next when a failed boot waits.
pub fn device_attestation(view: &DeviceAttestation) -> String {
    let pinned = view
        .pinned
        .iter()
        .map(|p| format!("PCR {} ({} events)", p.pcr, p.events))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = key_values(&[
        ("device", view.device_id.clone()),
        ("state", view.summary.state.to_string()),
        ("detail", view.summary.detail.clone().unwrap_or_default()),
        (
            "verified_at",
            time_or_none(view.summary.verified_at.as_ref()),
        ),
        ("checked_at", time_or_none(view.checked_at.as_ref())),
        ("interval", format!("{} s", view.interval_seconds)),
        (
            "secure_boot",
            if view.require_secure_boot {
                "required"
            } else {
                "not required"
            }
            .to_owned(),
        ),
        ("pinned", pinned),
        (
            "os_version",
            view.os_version.clone().unwrap_or_else(|| "none yet".into()),
        ),
        ("acceptable", yes_no(view.acceptable).to_owned()),
    ]);
    if view.uki.is_empty() {
        text.push_str("uki: none accepted yet\n");
    } else {
        text.push_str("\naccepted UKI PCR 11 values:\n");
        let mut table = Table::new(&["OS", "PCR11", "SOURCE"]);
        for value in &view.uki {
            table.push_row([
                value.os_version.as_str(),
                value.pcr11.as_str(),
                value.source.as_str(),
            ]);
        }
        text.push_str(&table.to_string());
    }
    if view.acceptable {
        let pending = view.pending.as_ref();
        let pcrs = pending.map_or_else(String::new, |p| {
            p.changed_pcrs
                .iter()
                .map(|pcr| format!("PCR {pcr}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let _ = writeln!(
            text,
            "\nits failed boot's measurements wait: changed firmware PCRs: {}; UKI: {}",
            if pcrs.is_empty() { "none" } else { &pcrs },
            pending.and_then(|p| p.uki.as_ref()).map_or_else(
                || "none".to_owned(),
                |u| format!(
                    "OS {} PCR 11 {}",
                    printable(&u.os_version),
                    printable(&u.pcr11)
                )
            )
        );
        let _ = writeln!(
            text,
            "pin them with `cairnctl device attestation {} --accept` (admin) if the change is expected",
            printable(&view.device_id)
        );
    }
    text
}

/// Confirmation of a device status change (`verb` is e.g. "approved").
pub fn device_changed(verb: &str, device: &Device) -> String {
    format!(
        "{verb} device {} (hostname {}, serial {}): status is now {}\n",
        printable(&device.id),
        printable(dash_if_empty(&device.hostname)),
        printable(dash_if_empty(&device.serial)),
        printable(device.status.as_str()),
    )
}

fn claim_kind_label(kind: &ClaimKind) -> String {
    match kind {
        ClaimKind::Serial => "serial".to_owned(),
        ClaimKind::TpmEk => "TPM EK hash".to_owned(),
        ClaimKind::Other(other) => printable(other),
    }
}

/// Table of claims.
pub fn claim_table(claims: &[Claim]) -> Table {
    let mut table = Table::new(&["ID", "KIND", "VALUE", "DEVICE", "CREATED"]);
    for claim in claims {
        table.push_row([
            claim.id.as_str(),
            claim.kind.as_str(),
            &claim.value,
            or_none(claim.device_id.as_deref()),
            &claim.created_at.to_string(),
        ]);
    }
    table
}

/// Confirmation of a new claim.
pub fn claim_added(claim: &Claim) -> String {
    let device = match &claim.device_id {
        Some(device) => format!("; device {} enrolled under it", printable(device)),
        None => {
            "; a device enrolling with a 'claim' token and this value will be approved".to_owned()
        }
    };
    format!(
        "added claim {} for {} {}{device}\n",
        printable(&claim.id),
        claim_kind_label(&claim.kind),
        printable(&claim.value),
    )
}

/// Table of API tokens.
pub fn api_token_table(tokens: &[ApiToken]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "ROLE",
        "REVOKED",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    let or_never =
        |at: Option<&Timestamp>| at.map_or_else(|| "never".to_owned(), Timestamp::to_string);
    for token in tokens {
        table.push_row([
            token.id.as_str(),
            &token.name,
            token.role.as_str(),
            yes_no(token.revoked),
            &token.created_at.to_string(),
            &or_never(token.expires_at.as_ref()),
            &or_never(token.last_used_at.as_ref()),
        ]);
    }
    table
}

/// Confirmation of a revoked API token.
pub fn api_token_revoked(token: &ApiToken) -> String {
    format!(
        "revoked API token {} '{}': central refuses it from now on\n",
        printable(&token.id),
        printable(&token.name)
    )
}

/// Confirmation of a new API token, with its secret and the warning that it is shown once.
pub fn api_token_created(created: &CreatedApiToken) -> String {
    let token = &created.api_token;
    format!(
        "created API token {} '{}' (role {})\n\
         secret: {}\n\
         This secret is shown only once: store it now (e.g. in a file for --token-file); central cannot show it again.\n",
        printable(&token.id),
        printable(&token.name),
        printable(token.role.as_str()),
        printable(&created.secret),
    )
}

/// Table of audit events.
pub fn audit_table(events: &[AuditEvent]) -> Table {
    let mut table = Table::new(&["ID", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
    for event in events {
        table.push_row([
            event.id.to_string().as_str(),
            &event.at.to_string(),
            &event.actor,
            &event.action,
            &event.target,
            &event.detail,
        ]);
    }
    table
}

/// Table of a device's apps: one row per service as the device last reported it; an app without
/// a report, or one that cannot run, gets one row saying so. `GEN` is the desired generation,
/// `SEEN` the one the report reflects.
pub fn app_table(list: &AppList) -> Table {
    let mut table = Table::new(&[
        "APP", "GEN", "SEEN", "SERVICE", "STATE", "HEALTH", "RESTARTS", "MESSAGE",
    ]);
    for listed in &list.apps {
        let app = &listed.app;
        let generation = app.generation.to_string();
        let Some(status) = &listed.status else {
            table.push_row([
                app.name.as_str(),
                &generation,
                NONE,
                NONE,
                "unreported",
                NONE,
                NONE,
                "the device has not reported this app yet",
            ]);
            continue;
        };
        let seen = status.generation.to_string();
        if !status.error.is_empty() || status.services.is_empty() {
            let state = if status.error.is_empty() {
                "pending"
            } else {
                "error"
            };
            table.push_row([
                app.name.as_str(),
                &generation,
                &seen,
                NONE,
                state,
                NONE,
                NONE,
                &status.error,
            ]);
        }
        for service in &status.services {
            let restarts = service.restarts.to_string();
            table.push_row([
                app.name.as_str(),
                &generation,
                &seen,
                &service.name,
                service.state.as_str(),
                service.health.as_str(),
                &restarts,
                &service.message,
            ]);
        }
    }
    table
}

/// Confirmation of a deploy to one device.
pub fn app_deployed(device_id: &str, deployed: &AppDeployed) -> String {
    if deployed.changed {
        format!(
            "deployed app {} to device {} (generation {}, desired revision {})\n",
            printable(&deployed.app.name),
            printable(device_id),
            deployed.app.generation,
            deployed.desired_revision
        )
    } else {
        format!(
            "app {} on device {} is already this file (generation {}); nothing changed\n",
            printable(&deployed.app.name),
            printable(device_id),
            deployed.app.generation
        )
    }
}

/// Confirmation of a removal from one device.
pub fn app_removed(device_id: &str, removed: &AppRemoved) -> String {
    format!(
        "removed app {} from device {} (desired revision {})\n",
        printable(&removed.removed),
        printable(device_id),
        removed.desired_revision
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::{DesiredOs, DeviceStatus, EnrollmentPolicy, KeyStorage};

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "STATE"]);
        table.push_row(["dev_1", "gateway-berlin-01", "active"]);
        table.push_row(["dev_22", "", "pending"]);
        assert_eq!(
            table.to_string(),
            "ID       NAME                STATE\n\
             dev_1    gateway-berlin-01   active\n\
             dev_22   -                   pending\n"
        );
    }

    #[test]
    fn table_last_column_is_not_padded_and_short_rows_are_filled() {
        let mut table = Table::new(&["A", "B"]);
        table.push_row(["x"]);
        table.push_row(["long-value", "1", "dropped"]);
        assert_eq!(
            table.to_string(),
            "A            B\nx            -\nlong-value   1\n"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut table = Table::new(&["CITY", "X"]);
        table.push_row(["Zürich", "1"]);
        table.push_row(["Bern", "2"]);
        assert_eq!(table.to_string(), "CITY     X\nZürich   1\nBern     2\n");
    }

    #[test]
    fn table_of_nothing_is_the_header() {
        let table = Table::new(&["ID", "NAME"]);
        assert!(table.is_empty());
        assert_eq!(table.to_string(), "ID   NAME\n");
    }

    #[test]
    fn table_cells_cannot_break_lines_or_emit_escapes() {
        let mut table = Table::new(&["HOST", "X"]);
        table.push_row(["evil\n\u{1b}[2J", "1"]);
        let text = table.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn key_values_line_up() {
        let text = key_values(&[("id", "dev_1".into()), ("last_seen_at", String::new())]);
        assert_eq!(text, "id:           dev_1\nlast_seen_at: -\n");
    }

    #[test]
    fn pretty_json_keeps_key_order_and_strings() {
        let raw = r#"{"z":1,"a":{"s":"x, y: {\"q\"} [ ]","e":[],"o":{}},"l":[1,2.50,null]}"#;
        assert_eq!(
            pretty_json(raw),
            "{\n  \"z\": 1,\n  \"a\": {\n    \"s\": \"x, y: {\\\"q\\\"} [ ]\",\n    \"e\": [],\n    \"o\": {}\n  },\n  \"l\": [\n    1,\n    2.50,\n    null\n  ]\n}\n"
        );
    }

    #[test]
    fn pretty_json_matches_serde_for_sorted_keys() {
        let value = serde_json::json!({"a": [1, {"b": "c\\\"d"}], "e": { }, "f": [ ], "g": true});
        let compact = serde_json::to_string(&value).unwrap();
        let spaced = " { \"a\" : [ 1 , { \"b\" : \"c\\\\\\\"d\" } ] , \"e\" : { } , \"f\" : [ ] , \"g\" : true } ";
        let expected = serde_json::to_string_pretty(&value).unwrap() + "\n";
        assert_eq!(pretty_json(&compact), expected);
        assert_eq!(pretty_json(spaced), expected);
    }

    fn device() -> Device {
        Device {
            id: "dev_1".into(),
            status: DeviceStatus::Active,
            serial: "SN1".into(),
            tpm_ek_sha256: "ab".repeat(32),
            hostname: "edge-1".into(),
            key_storage: KeyStorage::Tpm,
            agent_version: "0.1.0".into(),
            os_version: "2025.1".into(),
            token_id: "tok_1".into(),
            created_at: Timestamp::from_unix_seconds(1_735_689_600),
            approved_at: Some(Timestamp::from_unix_seconds(1_735_689_660)),
            last_seen_at: None,
            online: true,
            cert_serial: None,
            cert_expires_at: None,
            desired_revision: 7,
            config: [("tier".to_owned(), "edge".to_owned())].into(),
            desired_os: Some(DesiredOs {
                version: "2.0".into(),
                bundle_sha256: "cd".repeat(32),
                bundle_size: 4096,
                allow_downgrade: false,
                rollout_id: "rol_1".into(),
                health_deadline_seconds: 600,
            }),
            site: None,
            labels: Default::default(),
            wipe_requested_at: None,
            wiped_at: None,
        }
    }

    #[test]
    fn device_table_and_details_show_dash_for_null() {
        let listed = DeviceWithHost {
            device: device(),
            host: None,
            attestation: Default::default(),
        };
        let text = device_table(&[listed]).to_string();
        assert_eq!(
            text,
            "ID      STATUS   HOSTNAME   SERIAL   KEY   ATTEST        ONLINE   LAST-SEEN   AGENT   OS\n\
             dev_1   active   edge-1     SN1      tpm   unsupported   yes      -           0.1.0   2025.1\n"
        );
        let details = device_details(&device());
        assert!(details.contains("\nlast_seen_at:      -\n"), "{details}");
        assert!(details.contains("\ndesired_revision:  7\n"), "{details}");
        assert!(
            details.contains("\nconfig:            tier=edge\n"),
            "{details}"
        );
        assert!(
            details.contains("\ndesired_os:        2.0 (bundle cdcd"),
            "{details}"
        );
        assert!(
            details.contains("\ncreated_at:        2025-01-01T00:00:00Z\n"),
            "{details}"
        );
        assert!(details.contains("\nwiped_at:          -\n"), "{details}");
        assert_eq!(details.lines().count(), 22);
    }

    #[test]
    fn attestation_shows_pinned_pcrs_uki_values_and_the_next_step() {
        let view = DeviceAttestation {
            device_id: "dev_1".into(),
            summary: AttestationSummary {
                state: cairn_api::AttestationState::Failed,
                detail: Some("PCR 7: Secure Boot is off".into()),
                verified_at: None,
            },
            checked_at: Some(Timestamp::from_unix_seconds(1_735_689_600)),
            interval_seconds: 3600,
            require_secure_boot: true,
            pinned: vec![cairn_api::PinnedPcr { pcr: 0, events: 12 }],
            uki: vec![cairn_api::UkiValue {
                os_version: "2.0".into(),
                pcr11: "ab".into(),
                source: "bundle".into(),
            }],
            acceptable: true,
            os_version: Some("2.0".into()),
            pending: Some(cairn_api::PendingValues {
                changed_pcrs: vec![0, 7],
                uki: Some(cairn_api::UkiValue {
                    os_version: "2.1".into(),
                    pcr11: "cd".into(),
                    source: "pending".into(),
                }),
            }),
        };
        let text = device_attestation(&view);
        assert!(text.contains("os_version:  2.0\n"), "{text}");
        assert!(
            text.contains("changed firmware PCRs: PCR 0, PCR 7; UKI: OS 2.1 PCR 11 cd\n"),
            "{text}"
        );
        assert!(text.contains("state:       failed\n"), "{text}");
        assert!(
            text.contains("detail:      PCR 7: Secure Boot is off\n"),
            "{text}"
        );
        assert!(text.contains("pinned:      PCR 0 (12 events)\n"), "{text}");
        assert!(text.contains("\n2.0   ab      bundle\n"), "{text}");
        assert!(
            text.contains("cairnctl device attestation dev_1 --accept"),
            "{text}"
        );
    }

    #[test]
    fn token_created_shows_secret_once_with_warning() {
        let created = CreatedEnrollmentToken {
            token: EnrollmentToken {
                id: "tok_1".into(),
                name: "lab".into(),
                policy: EnrollmentPolicy::Auto,
                created_at: Timestamp::from_unix_seconds(1_735_689_600),
                expires_at: Timestamp::from_unix_seconds(1_738_368_000),
                max_uses: Some(5),
                uses: 0,
                revoked: false,
                require_tpm: true,
            },
            secret: "cet_s3cret".into(),
        };
        let text = enrollment_token_created(&created);
        assert_eq!(text.matches("cet_s3cret").count(), 1);
        assert!(text.contains("shown only once"));
        assert!(text.contains("max uses 5"));
        assert!(text.contains("keys tpm,"), "{text}");
        assert!(text.contains("expires 2025-02-01T00:00:00Z"), "{text}");
    }

    #[test]
    fn audit_table_shows_dashes_for_empty_target_and_detail() {
        let event = |detail: &str| AuditEvent {
            id: 1,
            at: Timestamp::from_unix_seconds(0),
            actor: "api:admin".into(),
            action: "device.approve".into(),
            target: String::new(),
            detail: detail.into(),
        };
        let text = audit_table(&[event("from=pending"), event("")]).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].ends_with("   -        from=pending"), "{text}");
        assert!(lines[2].ends_with("   -        -"), "{text}");
        assert!(lines[1].contains("1970-01-01T00:00:00Z"), "{text}");
    }
}
