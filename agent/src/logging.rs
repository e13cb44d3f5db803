//! Where the agent's logs go: on a device, journald with priorities and structured fields
//! (span and event fields such as `device_id`, `app`, `slot` become journal fields `DEVICE_ID`,
//! `APP`, `SLOT`), and the console lines ([`crate::console`]) on stdout; without a journal socket
//! (host tests, the demo, a developer's shell) everything goes to stderr as formatted text, as
//! before.

use std::path::Path;

use std::io::Write;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::console;

/// journald's native protocol socket; present where journald runs.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where the logs went, for the first log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// journald, console lines on stdout.
    Journal,
    /// Formatted text on stderr.
    Stderr,
}

/// A console line: printed on stdout on a device, not sent to journald a second time.
fn is_console(meta: &Metadata<'_>) -> bool {
    meta.target() == console::TARGET
}

/// Sets the process's subscriber: journald when [`JOURNAL_SOCKET`] exists and takes a message,
/// stderr otherwise. `CAIRN_LOG` filters (default `info`).
pub fn init() -> LogOutput {
    let filter = || EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = Path::new(JOURNAL_SOCKET)
        .exists()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    match journald {
        Some(journald) => {
            let journald = journald
                .with_field_prefix(None)
                .with_priority_mappings(PriorityMappings {
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    ..PriorityMappings::new()
                })
                .with_filter(filter_fn(|meta| !is_console(meta)));
            let console_lines = ConsoleLines.with_filter(filter_fn(|meta| {
                is_console(meta) && *meta.level() <= Level::INFO
            }));
            tracing_subscriber::registry()
                .with(filter())
                .with(journald)
                .with(console_lines)
                .init();
            LogOutput::Journal
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            LogOutput::Stderr
        }
    }
}

/// Prints each console line's message, alone, on stdout.
struct ConsoleLines;

impl<S: Subscriber> Layer<S> for ConsoleLines {
    fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        // One write per line, so lines of concurrent tasks do not interleave.
        let _ = std::io::stdout()
            .lock()
            .write_all(format!("{}\n", message.0).as_bytes());
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_line_is_told_apart_by_its_target() {
        #[derive(Clone, Default)]
        struct Seen(std::sync::Arc<std::sync::Mutex<Vec<(bool, String)>>>);
        impl<S: Subscriber> Layer<S> for Seen {
            fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
                let mut message = Message(String::new());
                event.record(&mut message);
                self.0
                    .lock()
                    .unwrap()
                    .push((is_console(event.metadata()), message.0));
            }
        }
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: console::TARGET, "CAIRN-UPDATE stage={} version={}", "installing", "0.3.0");
            tracing::info!(slot = "a", "an ordinary line");
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                (
                    true,
                    "CAIRN-UPDATE stage=installing version=0.3.0".to_string()
                ),
                (false, "an ordinary line".to_string())
            ]
        );
    }
}
