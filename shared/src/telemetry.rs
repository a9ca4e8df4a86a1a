//! Logging: structured JSON (or pretty) lines through `tracing`, filtered by
//! `RUST_LOG` (default `info`). Request ids and job ids ride on spans.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) is harmless.
    let _ = result;
}

/// Histogram buckets (seconds) of both binaries: fine below 50 ms, where
/// the webhook ack alert sits.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A gauge no code has written for this long is dropped from `/metrics`
/// (a missing series, which an alert can see, rather than a stale value).
pub const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a metric is, as Prometheus sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// Which process exports a metric (`Both`: code in `shared` that either runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// The api's ops listener (`METRICS_ADDR`).
    Api,
    /// The worker's ops listener (`WORKER_METRICS_ADDR`).
    Worker,
    Both,
}

/// One metric the code exports.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricType,
    pub exporter: Exporter,
    pub help: &'static str,
}

const fn m(name: &'static str, kind: MetricType, exporter: Exporter, help: &'static str) -> Metric {
    Metric { name, kind, exporter, help }
}

/// Every metric the binaries export. `shared/tests/metrics.rs` reads the
/// source and fails when a `metrics::…!` call names one missing here (or
/// this names one no code records), and when the alerts or the dashboard
/// under `ops/` query a name that is not here.
pub const METRICS: &[Metric] = {
    use Exporter::*;
    use MetricType::*;
    &[
        m("kobatela_http_requests_total", Counter, Api, "HTTP requests by method, route and status"),
        m("kobatela_http_request_seconds", Histogram, Api, "HTTP request latency by method and route"),
        m("kobatela_jobs_enqueued_total", Counter, Api, "jobs accepted by the api, by kind"),
        m("kobatela_insert_batch_rows", Histogram, Api, "job rows per group-commit insert"),
        m("kobatela_webhook_ack_seconds", Histogram, Api, "time to answer a PSP webhook"),
        m(
            "kobatela_auth_failures_total",
            Counter,
            Api,
            "failed authentications by kind (key: missing, unknown, revoked or expired; webhook: bad signature or timestamp)",
        ),
        m(
            "kobatela_auth_throttled_total",
            Counter,
            Api,
            "requests refused 429 before any key lookup: their address is over AUTH_FAILURES_PER_ADDR",
        ),
        m(
            "kobatela_rate_limit_fallback_total",
            Counter,
            Api,
            "requests this api process limited with budgets of its own because Redis could not be reached",
        ),
        m(
            "kobatela_rate_limits_shared",
            Gauge,
            Api,
            "1 while the rate limits are shared through Redis, 0 while this process falls back to its own",
        ),
        m("kobatela_jobs", Gauge, Api, "job rows by kind and status (queued, running, dead); sampled"),
        m("kobatela_queue_depth", Gauge, Api, "entries in each kind's stream; sampled"),
        m("kobatela_queue_pending", Gauge, Api, "stream entries delivered and not acknowledged; sampled"),
        m("kobatela_queue_oldest_queued_seconds", Gauge, Api, "age of the oldest due queued job per kind; sampled"),
        m(
            "kobatela_queue_consumers_alive",
            Gauge,
            Api,
            "consumers of each kind that polled within 3 block periods (as their workers report)",
        ),
        m("kobatela_invariant_violations", Gauge, Api, "violating rows per invariant in the last stored run"),
        m("kobatela_invariants_checked_at_seconds", Gauge, Api, "when the last stored invariants run was (unix time)"),
        m("kobatela_metrics_sample_age_seconds", Gauge, Api, "seconds since the sampler last read every gauge"),
        m("kobatela_jobs_total", Counter, Worker, "jobs ended by kind and outcome"),
        m("kobatela_job_seconds", Histogram, Worker, "time a worker spent on a job, by kind"),
        m("kobatela_job_end_to_end_seconds", Histogram, Worker, "created to finished, by kind"),
        m("kobatela_cron_ticks_total", Counter, Worker, "cron ticks fired by schedule and outcome (won, lost)"),
        m("kobatela_stream_length", Gauge, Worker, "entries in each kind's stream, as the worker sees it"),
        m("kobatela_stream_pending", Gauge, Worker, "pending entries per kind, as the worker sees it"),
        m("kobatela_consumer_last_poll_seconds", Gauge, Worker, "seconds since each consumer completed a poll"),
        m("kobatela_relay_pushed_total", Counter, Worker, "jobs the relay pushed again"),
        m("kobatela_relay_dead_total", Counter, Worker, "jobs the relay made dead (lease ran out on the last attempt)"),
        m("kobatela_transport_recoveries_total", Counter, Worker, "stream consumer recoveries from a Redis fault"),
        m("kobatela_transport_claimed_total", Counter, Worker, "entries taken over with XAUTOCLAIM"),
        m("kobatela_transport_pushed_total", Counter, Both, "entries pushed to the streams"),
        m("kobatela_serialization_retries_total", Counter, Both, "SERIALIZABLE transactions restarted (40001, 40P01)"),
    ]
};

/// Gives every metric of [`METRICS`] its `# HELP` line (after a recorder is
/// installed).
pub fn describe_metrics() {
    for metric in METRICS {
        match metric.kind {
            MetricType::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricType::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricType::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}
