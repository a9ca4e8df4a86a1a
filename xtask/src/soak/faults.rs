//! Faults on a seeded schedule: the same seed and length give the same
//! faults at the same offsets. Every kind comes once, in a seeded order,
//! within the first part of the run (so even a 3-minute soak has them all);
//! after that kinds are drawn at random every 10 to 30 s. Faults stop a
//! little before the end so the last one heals under load.
//!
//! Beside the faults, psp-sim's failing amounts are switched on and off
//! every 20 to 40 s, so a payment that failed can succeed on a re-drive.

use std::fmt;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio::time::{Instant, sleep, sleep_until};

use super::fleet::{FAIL_AMOUNTS, Fleet, WORKERS, worker_name};
use super::http::Http;
use super::rng::Rng;
use crate::services::Owned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillWorker,
    TermWorker,
    RestartRedis,
    FlushRedis,
    RestartPostgres,
    PausePsp,
    KillApi,
}

pub const ALL: [Fault; 7] = [
    Fault::KillWorker,
    Fault::TermWorker,
    Fault::RestartRedis,
    Fault::FlushRedis,
    Fault::RestartPostgres,
    Fault::PausePsp,
    Fault::KillApi,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillWorker => "SIGKILL a worker, restart it",
            Fault::TermWorker => "SIGTERM a worker, restart it",
            Fault::RestartRedis => "restart Redis",
            Fault::FlushRedis => "FLUSHALL Redis",
            Fault::RestartPostgres => "restart Postgres (pg_ctl -m fast)",
            Fault::PausePsp => "pause psp-sim (SIGSTOP/SIGCONT)",
            Fault::KillApi => "SIGKILL the api mid-request, restart it",
        })
    }
}

/// One planned fault: when (from the start), what, and its seeded details
/// (which worker, how long it stays down).
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
    pub target: usize,
    pub down: Duration,
}

/// The schedule of a soak of `length` (faults from 10 s in to 25 s before
/// the end).
pub fn schedule(seed: u64, length: Duration) -> Vec<Planned> {
    let mut rng = Rng::fork(seed, 0xFA17);
    let start = Duration::from_secs(10);
    let end = length.saturating_sub(Duration::from_secs(25)).max(start + Duration::from_secs(70));
    let mut kinds = ALL.to_vec();
    rng.shuffle(&mut kinds);
    // The first pass: every kind once, each in a slot of its own.
    let first_pass = (end - start).min(Duration::from_secs(160));
    let slot = first_pass / kinds.len() as u32;
    let mut plan = Vec::new();
    for (i, fault) in kinds.into_iter().enumerate() {
        let jitter = Duration::from_millis(rng.range(0, slot.as_millis() as u64 / 3));
        plan.push(planned(&mut rng, start + slot * i as u32 + jitter, fault));
    }
    let mut at = start + first_pass;
    loop {
        at += Duration::from_secs(rng.range(10, 31));
        if at >= end {
            break;
        }
        let fault = ALL[rng.range(0, ALL.len() as u64) as usize];
        plan.push(planned(&mut rng, at, fault));
    }
    plan
}

fn planned(rng: &mut Rng, at: Duration, fault: Fault) -> Planned {
    Planned {
        at,
        fault,
        target: rng.range(0, WORKERS as u64) as usize,
        down: Duration::from_millis(rng.range(1_000, 6_000)),
    }
}

/// Runs the schedule against the fleet and services until it ends or the
/// soak stops; the faults injected, in order, with what happened.
pub async fn inject(
    plan: &[Planned],
    started: Instant,
    fleet: &mut Fleet,
    owned: &mut Owned,
    http: &Http,
    seed: u64,
) -> Vec<(Planned, String)> {
    let mut done = Vec::new();
    let mut toggles = Rng::fork(seed, 0x7066);
    let mut next_toggle = started + Duration::from_secs(toggles.range(20, 41));
    let mut failing = true;
    for fault in plan {
        let due = started + fault.at;
        // Until the fault is due: watch the processes, switch psp-sim's
        // failing amounts when their time comes.
        while Instant::now() < due {
            if http.shared.stopping() {
                return done;
            }
            for text in fleet.revive_the_fallen().await {
                http.shared.finding(text);
            }
            if Instant::now() >= next_toggle {
                failing = !failing;
                let amounts: Vec<&str> = if failing { FAIL_AMOUNTS.to_vec() } else { Vec::new() };
                let _ = http
                    .call("psp-sim POST /sim/config", false, &|c| {
                        c.post(format!("{}/sim/config", http.psp)).json(&json!({"fail_amounts": amounts}))
                    })
                    .await;
                next_toggle = Instant::now() + Duration::from_secs(toggles.range(20, 41));
            }
            sleep_until(due.min(Instant::now() + Duration::from_millis(500))).await;
        }
        let at = started.elapsed().as_secs_f64();
        let outcome = match apply(fault, fleet, owned, http).await {
            Ok(text) => text,
            Err(e) => {
                http.shared.finding(format!("fault {} at {at:.0} s could not be applied: {e:#}", fault.fault));
                format!("error: {e:#}")
            }
        };
        println!("soak: {at:>6.1} s  fault: {} -> {outcome}", fault.fault);
        done.push((fault.clone(), outcome));
    }
    done
}

async fn apply(p: &Planned, fleet: &mut Fleet, owned: &mut Owned, http: &Http) -> Result<String> {
    match p.fault {
        Fault::KillWorker | Fault::TermWorker => {
            let signal = if p.fault == Fault::KillWorker { "KILL" } else { "TERM" };
            let status = fleet.signal_worker(p.target, signal).await?;
            sleep(p.down).await;
            fleet.start_worker(p.target)?;
            Ok(format!("{} {status}, back after {:.1} s", worker_name(p.target), p.down.as_secs_f64()))
        }
        Fault::RestartRedis => {
            let outage = http.shared.outage_begin();
            let result = async {
                owned.kill_redis().await?;
                sleep(p.down).await;
                owned.start_redis_again().await
            }
            .await;
            http.shared.outage_end(outage);
            result.map(|()| format!("down {:.1} s", p.down.as_secs_f64()))
        }
        Fault::FlushRedis => owned.flushall().await.map(|()| "flushed".to_string()),
        Fault::RestartPostgres => {
            let outage = http.shared.outage_begin();
            let result = owned.restart_postgres().await;
            http.shared.outage_end(outage);
            result.map(|took| format!("restarted in {:.1} s", took.as_secs_f64()))
        }
        Fault::PausePsp => {
            fleet.pause_psp(true).await?;
            sleep(p.down).await;
            fleet.pause_psp(false).await?;
            Ok(format!("paused {:.1} s", p.down.as_secs_f64()))
        }
        Fault::KillApi => {
            // Mid-request: wait (briefly) until requests are in flight.
            let until = Instant::now() + Duration::from_secs(3);
            while http.shared.inflight.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < until {
                sleep(Duration::from_millis(5)).await;
            }
            let inflight = http.shared.inflight.load(std::sync::atomic::Ordering::SeqCst);
            let status = fleet.kill_api().await?;
            sleep(p.down.min(Duration::from_secs(2))).await;
            fleet.start_api().await?;
            Ok(format!("{status} with {inflight} requests in flight, back up"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_with_every_kind_in_three_minutes() {
        let three = Duration::from_secs(180);
        let a = schedule(42, three);
        assert_eq!(a, schedule(42, three));
        assert_ne!(a, schedule(43, three));
        for kind in ALL {
            assert!(a.iter().any(|p| p.fault == kind), "{kind} missing from {a:?}");
        }
        assert!(a.iter().all(|p| p.at + Duration::from_secs(20) <= three), "{a:?}");
        let thirty = schedule(42, Duration::from_secs(1800));
        assert!(thirty.len() > 40, "{} faults in 30 minutes", thirty.len());
    }
}
