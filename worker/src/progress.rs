//! Whether each kind's consumer gets jobs done: per kind, the jobs in
//! flight (delivered to this worker and not yet handled) and the last time
//! one finished. A consumer that has held jobs for three leases
//! (3 × `JOB_TIMEOUT_SECS`) and finished none, every job timing out say,
//! makes `/health` answer 503: polling Redis is not enough to be healthy.
//!
//! A run that ended by its own means (succeeded, refused, or failed on an
//! error it met) is progress; one stopped by the time limit is not; a
//! delivery with nothing to do (already ended, running elsewhere) or one
//! whose outcome could not be recorded (Postgres away, which `/health`
//! reports on its own) changes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shared::jobs::JobKind;
use shared::jobs::exec::Report;

/// Every kind's progress.
pub struct Progress {
    kinds: HashMap<JobKind, KindProgress>,
    /// Three leases: held this long without finishing anything is stuck.
    stuck_after: Duration,
}

#[derive(Default)]
struct KindProgress {
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Since when this kind has held jobs without finishing any: set by
    /// the first delivery after a finish, cleared by the next finish. Short
    /// idle gaps count too, so jobs that time out one after the other, with
    /// back-offs between them, add up; a gap longer than three leases
    /// starts the count again (one old timeout is no verdict on a new job).
    waiting_since: Option<Instant>,
    /// When the last delivery in hand was let go (nothing in flight since).
    idle_since: Option<Instant>,
    last_finish: Option<DateTime<Utc>>,
}

/// One consumer's view, for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KindView {
    pub in_flight: usize,
    pub last_finish_at: Option<DateTime<Utc>>,
    /// How long it has held jobs without finishing one (ms), if it does.
    pub waiting_ms: Option<u64>,
    pub stuck: bool,
}

/// A delivery in hand; dropped without [`InFlight::done`] (a panic, a
/// shutdown) it still leaves the in-flight count.
pub struct InFlight<'a> {
    kind: &'a KindProgress,
}

impl Progress {
    pub fn new(lease: Duration) -> Self {
        let kinds = JobKind::ALL.iter().map(|k| (*k, KindProgress::default())).collect();
        Self { kinds, stuck_after: lease * 3 }
    }

    /// A delivery of `kind` arrived; `None` for a kind we do not track.
    pub fn start(&self, kind: JobKind) -> Option<InFlight<'_>> {
        let k = self.kinds.get(&kind)?;
        let mut state = k.state.lock().unwrap_or_else(|e| e.into_inner());
        let was_idle = k.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        if was_idle && state.idle_since.is_some_and(|at| at.elapsed() > self.stuck_after) {
            state.waiting_since = None;
        }
        state.waiting_since.get_or_insert_with(Instant::now);
        Some(InFlight { kind: k })
    }

    pub fn view(&self, kind: JobKind) -> Option<KindView> {
        let k = self.kinds.get(&kind)?;
        let in_flight = k.in_flight.load(Ordering::Acquire);
        let state = k.state.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = state.waiting_since.map(|at| at.elapsed());
        Some(KindView {
            in_flight,
            last_finish_at: state.last_finish,
            waiting_ms: waiting.map(|w| w.as_millis() as u64),
            // Idle is never stuck: nothing is held that could be finished.
            stuck: in_flight > 0 && waiting.is_some_and(|w| w > self.stuck_after),
        })
    }
}

impl InFlight<'_> {
    /// The delivery was handled: `Ok(report)` how its run went, `Err` when
    /// its outcome could not be recorded.
    pub fn done<E>(self, handled: &Result<Report, E>) {
        let finished = match handled {
            Ok(Report::Skipped | Report::Busy | Report::Superseded) | Err(_) => false,
            Ok(report) => !report.timed_out(),
        };
        if finished {
            let mut state = self.kind.state.lock().unwrap_or_else(|e| e.into_inner());
            state.waiting_since = None;
            state.last_finish = Some(Utc::now());
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.kind.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.kind.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            state.idle_since = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed_out() -> Report {
        Report::Errored {
            status: "queued".into(),
            message: shared::Error::internal(shared::jobs::exec::TIMED_OUT).to_string(),
        }
    }

    #[test]
    fn jobs_held_past_three_leases_with_none_finished_are_stuck_until_one_finishes() {
        let p = Progress::new(Duration::from_millis(10));
        let kind = JobKind::ALL[0];
        let first = p.start(kind).expect("tracked");
        first.done::<()>(&Ok(timed_out()));
        let second = p.start(kind).expect("tracked");
        std::thread::sleep(Duration::from_millis(40));
        let view = p.view(kind).expect("tracked");
        assert!(view.stuck && view.in_flight == 1 && view.last_finish_at.is_none(), "{view:?}");
        second.done::<()>(&Ok(Report::Succeeded));
        let view = p.view(kind).expect("tracked");
        assert!(!view.stuck && view.in_flight == 0 && view.last_finish_at.is_some(), "{view:?}");
    }

    #[test]
    fn an_idle_consumer_is_never_stuck_and_a_refusal_is_progress() {
        // Three leases: 60 ms.
        let p = Progress::new(Duration::from_millis(20));
        let kind = JobKind::ALL[0];
        p.start(kind).expect("tracked").done::<()>(&Ok(timed_out()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!p.view(kind).expect("tracked").stuck, "nothing in flight");
        // Held again within the window: the count goes on from the first delivery.
        let held = p.start(kind).expect("tracked");
        std::thread::sleep(Duration::from_millis(40));
        assert!(p.view(kind).expect("tracked").stuck, "held, and nothing finished for 80 ms");
        held.done::<()>(&Ok(Report::Failed("MANDATE_EXHAUSTED".into())));
        assert!(!p.view(kind).expect("tracked").stuck);
    }

    #[test]
    fn a_long_idle_gap_starts_the_count_again() {
        let p = Progress::new(Duration::from_millis(5));
        let kind = JobKind::ALL[0];
        p.start(kind).expect("tracked").done::<()>(&Ok(timed_out()));
        std::thread::sleep(Duration::from_millis(40));
        let _held = p.start(kind).expect("tracked");
        let view = p.view(kind).expect("tracked");
        assert!(!view.stuck, "an old timeout is no verdict on a new job: {view:?}");
    }
}
