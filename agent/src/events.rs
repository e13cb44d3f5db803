//! Events the agent reports to central's event log (data unlock outcome, apps refused or failing
//! to reconcile, agent start), queued in memory and sent on the Sync stream.
//!
//! The queue is bounded ([`EVENT_QUEUE_CAPACITY`]): while central is unreachable the oldest events
//! are dropped and counted, and the next connection first sends one `agent.events_dropped` event
//! with the count. Events are not persisted: they are for operators, not for correctness.

use std::collections::VecDeque;
use std::sync::Mutex;

use cairn_proto::v1::{Event, EventSeverity};
use tokio::sync::Notify;

/// Most events held while they cannot be sent.
pub const EVENT_QUEUE_CAPACITY: usize = 64;

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Event>,
    dropped: u64,
}

/// The bounded queue of events waiting for the Sync stream.
#[derive(Debug, Default)]
pub struct EventQueue {
    inner: Mutex<Inner>,
    added: Notify,
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EventQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue an event (`kind` one of [`cairn_proto::AGENT_EVENT_KINDS`]); the message is cut to
    /// [`cairn_proto::MAX_EVENT_MESSAGE_BYTES`]. When the queue is full the oldest event is dropped
    /// and counted.
    pub fn push(&self, kind: &'static str, severity: EventSeverity, message: &str) {
        debug_assert!(
            cairn_proto::AGENT_EVENT_KINDS.contains(&kind),
            "unknown event kind {kind}"
        );
        let event = Event {
            kind: kind.to_owned(),
            severity: severity as i32,
            message: cairn_proto::truncate_status_text(
                message,
                cairn_proto::MAX_EVENT_MESSAGE_BYTES,
            ),
            at_unix_ms: unix_ms_now(),
        };
        {
            let mut inner = self.lock();
            if inner.queue.len() >= EVENT_QUEUE_CAPACITY {
                inner.queue.pop_front();
                inner.dropped += 1;
            }
            inner.queue.push_back(event);
        }
        self.added.notify_one();
    }

    /// The next event to send: first a summary of dropped events, if any, then the oldest queued.
    pub fn pop(&self) -> Option<Event> {
        let mut inner = self.lock();
        if inner.dropped > 0 {
            let dropped = std::mem::take(&mut inner.dropped);
            return Some(Event {
                kind: "agent.events_dropped".into(),
                severity: EventSeverity::Warning as i32,
                message: format!(
                    "{dropped} events were dropped on the device: its queue holds {EVENT_QUEUE_CAPACITY} while central is unreachable"
                ),
                at_unix_ms: unix_ms_now(),
            });
        }
        inner.queue.pop_front()
    }

    /// Put an event back at the front (the stream could not take it); it is sent first next time.
    pub fn unpop(&self, event: Event) {
        let mut inner = self.lock();
        if inner.queue.len() >= EVENT_QUEUE_CAPACITY {
            inner.dropped += 1;
            return;
        }
        inner.queue.push_front(event);
    }

    /// The clock was stepped by `by_ms`: events still waiting were stamped by the wrong clock,
    /// so they move with it (the first events of a boot without an RTC would otherwise show
    /// years in the past).
    pub fn shift_waiting(&self, by_ms: i64) {
        for event in self.lock().queue.iter_mut() {
            event.at_unix_ms = event.at_unix_ms.saturating_add(by_ms);
        }
    }

    /// Number of events waiting (the dropped summary not counted).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.queue.is_empty() && inner.dropped == 0
    }

    /// Resolves when an event was pushed since the last wait.
    pub async fn added(&self) {
        self.added.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_drops_the_oldest_and_reports_the_count_first() {
        let queue = EventQueue::default();
        for i in 0..EVENT_QUEUE_CAPACITY + 3 {
            queue.push("app.refused", EventSeverity::Error, &format!("event {i}"));
        }
        assert_eq!(queue.len(), EVENT_QUEUE_CAPACITY);
        let summary = queue.pop().unwrap();
        assert_eq!(summary.kind, "agent.events_dropped");
        assert!(
            summary.message.starts_with("3 events were dropped"),
            "{}",
            summary.message
        );
        assert_eq!(
            queue.pop().unwrap().message,
            "event 3",
            "the three oldest were dropped"
        );
        let rest: Vec<Event> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(rest.len(), EVENT_QUEUE_CAPACITY - 1);
        assert_eq!(
            rest.last().unwrap().message,
            format!("event {}", EVENT_QUEUE_CAPACITY + 2)
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn long_messages_are_cut_and_unpop_keeps_order() {
        let queue = EventQueue::default();
        queue.push("data.unlock", EventSeverity::Info, &"x".repeat(5000));
        queue.push("agent.started", EventSeverity::Info, "second");
        let first = queue.pop().unwrap();
        assert!(first.message.len() <= cairn_proto::MAX_EVENT_MESSAGE_BYTES);
        queue.unpop(first);
        assert_eq!(queue.pop().unwrap().kind, "data.unlock");
        assert_eq!(queue.pop().unwrap().message, "second");
        assert!(queue.pop().is_none());
    }

    #[test]
    fn waiting_events_move_with_a_clock_step() {
        let queue = EventQueue::default();
        queue.push("agent.started", EventSeverity::Info, "before the step");
        let stamped = {
            let event = queue.pop().unwrap();
            let at = event.at_unix_ms;
            queue.unpop(event);
            at
        };
        let year_ms = 365 * 86_400_000;
        queue.shift_waiting(3 * year_ms);
        assert_eq!(queue.pop().unwrap().at_unix_ms, stamped + 3 * year_ms);
    }
}
