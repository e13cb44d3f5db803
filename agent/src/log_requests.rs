//! Answers central's `LogRequest`s: the last lines of an app service's log file (written by the
//! log writer the containerd shim starts, see [`cairn_runtime::container::RuntimeConfig::log_path`], rotated copies
//! included) or of the agent's own journal unit (`journalctl -u cairn-agent`).
//!
//! Replies stay under [`cairn_proto::MAX_LOG_REPLY_BYTES`]: the oldest lines are cut first and
//! the reply says so.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::{Tool, ToolError};
use cairn_proto::v1::{LogReply, LogRequest};
use cairn_runtime::container::RuntimeConfig;
use tracing::{info_span, Instrument};

use crate::config::AppsConfig;

/// The systemd unit of the agent.
pub const AGENT_UNIT: &str = "cairn-agent";

/// Longest wait for `journalctl`.
pub const JOURNALCTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    /// The request is malformed (central validates too; this guards the agent).
    #[error("invalid log request: {0}")]
    Invalid(String),
    /// The service has no log file yet.
    #[error("no log for service {service:?} of app {app:?} at {path}: the service has not started on this device yet, or the app is not deployed here")]
    NoLog {
        /// App.
        app: String,
        /// Service.
        service: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A log file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// journalctl is not installed.
    #[error("journalctl is not available on this device ({0}); the agent's journal cannot be read, look at its stderr instead")]
    NoJournalctl(#[source] ToolError),
    /// journalctl failed or took too long.
    #[error("journalctl failed: {0}")]
    Journalctl(#[source] ToolError),
    /// The blocking task reading the log failed.
    #[error("the log reader task failed: {0}")]
    Task(String),
}

/// Where the answers come from: the apps' log files and the agent's journal.
#[derive(Debug, Clone)]
pub struct LogSources {
    runtime: RuntimeConfig,
    journalctl: PathBuf,
}

impl LogSources {
    /// The apps' logs under `[apps]`'s data dir, the journal through `journalctl` on PATH.
    pub fn new(apps: &AppsConfig, state_dir: &Path) -> LogSources {
        let mut runtime = RuntimeConfig::new(apps.data_dir(state_dir));
        runtime.runc_root = apps.runc_root.clone();
        LogSources {
            runtime,
            journalctl: PathBuf::from("journalctl"),
        }
    }

    /// Answers one request (see [`answer`]).
    pub async fn answer(&self, request: LogRequest) -> LogReply {
        answer(self.runtime.clone(), self.journalctl.clone(), request).await
    }
}

/// The last `lines` lines of `text`-producing files, newest file first; returns (text, truncated).
/// Reads at most `max_bytes + 1` bytes of each file from its end.
pub fn tail_files(
    files: &[PathBuf],
    lines: usize,
    max_bytes: usize,
) -> Result<(String, bool), LogReadError> {
    // Lines newest first, across files.
    let mut collected: Vec<String> = Vec::new();
    let mut cut_by_size = false;
    for path in files {
        if collected.len() >= lines {
            break;
        }
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(LogReadError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        let read_err = |source| LogReadError::Read {
            path: path.clone(),
            source,
        };
        let size = file.metadata().map_err(read_err)?.len();
        let window = (max_bytes as u64 + 1).min(size);
        file.seek(SeekFrom::Start(size - window))
            .map_err(read_err)?;
        let mut bytes = Vec::with_capacity(window as usize);
        file.take(window)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut file_lines: Vec<&str> = text.split('\n').collect();
        if file_lines.last() == Some(&"") {
            file_lines.pop();
        }
        if window < size && !file_lines.is_empty() {
            // Started mid-line: the first piece is not a whole line, and older ones were not read.
            file_lines.remove(0);
            cut_by_size = true;
        }
        for line in file_lines.iter().rev() {
            if collected.len() >= lines {
                break;
            }
            collected.push(line.trim_end_matches('\r').to_owned());
        }
        if cut_by_size {
            break;
        }
    }
    let truncated_by_size = cut_by_size && collected.len() < lines;
    let (text, cut) = join_capped(collected.into_iter().rev(), max_bytes);
    Ok((text, cut || truncated_by_size))
}

/// Join lines (oldest first) with newlines, dropping the oldest until the text fits `max_bytes`.
fn join_capped(lines: impl DoubleEndedIterator<Item = String>, max_bytes: usize) -> (String, bool) {
    let mut kept: Vec<String> = Vec::new();
    let mut size = 0;
    let mut cut = false;
    for line in lines.rev() {
        if size + line.len() + 1 > max_bytes {
            cut = true;
            break;
        }
        size += line.len() + 1;
        kept.push(line);
    }
    kept.reverse();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    (text, cut)
}

/// The last `lines` lines of a service's log (its rotated copies `.1`, `.2`... read when the
/// current file has fewer lines).
pub fn service_log(
    runtime: &RuntimeConfig,
    app: &str,
    service: &str,
    lines: usize,
) -> Result<(String, bool), LogReadError> {
    for name in [app, service] {
        cairn_compose::check_app_or_service_name(name)
            .map_err(|e| LogReadError::Invalid(format!("{name:?} {e}")))?;
    }
    let current = runtime.log_path(app, service);
    if !current.exists() {
        return Err(LogReadError::NoLog {
            app: app.into(),
            service: service.into(),
            path: current,
        });
    }
    let mut files = vec![current.clone()];
    // A service's own `logging` may keep more copies than the default; missing ones are skipped.
    let keep = runtime
        .log_keep
        .max(cairn_runtime::container::MAX_LOG_FILES);
    for n in 1..=keep {
        files.push(PathBuf::from(format!("{}.{n}", current.display())));
    }
    tail_files(&files, lines, cairn_proto::MAX_LOG_REPLY_BYTES)
}

/// The last `lines` lines of the agent's journal unit, through `journalctl` (bounded by
/// [`JOURNALCTL_TIMEOUT`]).
pub async fn agent_journal(
    journalctl: &Path,
    lines: usize,
) -> Result<(String, bool), LogReadError> {
    let tool = Tool::new(journalctl)
        .purpose("read the agent's journal")
        .args(["-u", AGENT_UNIT, "-n", &lines.to_string()])
        .args(["-o", "short-iso", "--no-pager"])
        .timeout(JOURNALCTL_TIMEOUT);
    let output = tokio::task::spawn_blocking(move || tool.run())
        .await
        .map_err(|e| LogReadError::Task(e.to_string()))?
        .map_err(|e| match e {
            ToolError::NotFound { .. } => LogReadError::NoJournalctl(e),
            e => LogReadError::Journalctl(e),
        })?;
    let text = output.stdout_text();
    let all: Vec<String> = text.lines().map(str::to_owned).collect();
    let start = all.len().saturating_sub(lines);
    Ok(join_capped(
        all.into_iter().skip(start),
        cairn_proto::MAX_LOG_REPLY_BYTES,
    ))
}

/// Answer one request: app logs from under `runtime`, the journal through `journalctl`.
pub async fn answer(runtime: RuntimeConfig, journalctl: PathBuf, request: LogRequest) -> LogReply {
    let span = info_span!("logs.request", id = %request.id, app = %request.app, service = %request.service, lines = request.lines);
    async move {
        let lines = request.lines.clamp(1, cairn_proto::MAX_LOG_LINES) as usize;
        let result = if request.app.is_empty() && request.service.is_empty() {
            agent_journal(&journalctl, lines).await
        } else {
            let (app, service) = (request.app.clone(), request.service.clone());
            tokio::task::spawn_blocking(move || service_log(&runtime, &app, &service, lines))
                .await
                .unwrap_or_else(|e| Err(LogReadError::Task(e.to_string())))
        };
        match result {
            Ok((text, truncated)) => {
                tracing::info!(bytes = text.len(), truncated, "log lines sent to central");
                LogReply {
                    request_id: request.id,
                    text,
                    truncated,
                    error: String::new(),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "log request failed");
                LogReply {
                    request_id: request.id,
                    text: String::new(),
                    truncated: false,
                    error: cairn_proto::truncate_status_text(&e.to_string(), 1024),
                }
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_across_rotated_files_and_caps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeConfig::new(dir.path());
        let log = runtime.log_path("web", "nginx");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(format!("{}.1", log.display()), "old 1\nold 2\n").unwrap();
        std::fs::write(&log, "new 1\r\nnew 2\nnew 3\n").unwrap();

        let (text, truncated) = service_log(&runtime, "web", "nginx", 2).unwrap();
        assert_eq!((text.as_str(), truncated), ("new 2\nnew 3\n", false));
        let (text, truncated) = service_log(&runtime, "web", "nginx", 4).unwrap();
        assert_eq!(
            (text.as_str(), truncated),
            ("old 2\nnew 1\nnew 2\nnew 3\n", false)
        );
        let (text, _) = service_log(&runtime, "web", "nginx", 100).unwrap();
        assert_eq!(text.lines().count(), 5);

        // A size cap cuts the oldest lines and says so.
        let files = vec![log.clone()];
        let (text, truncated) = tail_files(&files, 3, 12).unwrap();
        assert_eq!((text.as_str(), truncated), ("new 2\nnew 3\n", true));
        // A long file read from its end starts at a whole line.
        let big: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, &big).unwrap();
        let (text, truncated) = tail_files(&files, 10_000, 1000).unwrap();
        assert!(truncated);
        assert!(
            text.len() <= 1000 && text.ends_with("line 9999\n"),
            "{text}"
        );
        assert!(text.starts_with("line "), "{text}");
    }

    #[test]
    fn bad_names_and_missing_logs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeConfig::new(dir.path());
        let err = service_log(&runtime, "../etc", "x", 1).unwrap_err();
        assert!(matches!(err, LogReadError::Invalid(_)), "{err}");
        let err = service_log(&runtime, "web", "db", 1).unwrap_err();
        assert!(
            err.to_string().contains("has not started on this device"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn journal_without_journalctl_says_so() {
        let reply = answer(
            RuntimeConfig::new("/nonexistent"),
            PathBuf::from("/nonexistent/journalctl"),
            LogRequest {
                id: "log_1".into(),
                app: String::new(),
                service: String::new(),
                lines: 5,
            },
        )
        .await;
        assert_eq!(reply.request_id, "log_1");
        assert!(
            reply.error.contains("journalctl is not available"),
            "{}",
            reply.error
        );
    }

    #[tokio::test]
    async fn journal_output_is_taken_from_journalctl() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("journalctl");
        std::fs::write(&fake, "#!/bin/sh\necho \"args: $*\"\necho second\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (text, truncated) = agent_journal(&fake, 7).await.unwrap();
        assert_eq!(
            text,
            "args: -u cairn-agent -n 7 -o short-iso --no-pager\nsecond\n"
        );
        assert!(!truncated);
    }
}
