//! What a load test counts while it runs ([`Tally`]) and what it reports at the end
//! ([`Report`]: a table on stdout, JSON for `--json`), with a progress line a second.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tonic::Status;

use super::latency::Percentiles;
use crate::code_name;

/// Bytes in a MB: decimal, as network throughput is counted.
const MB: f64 = 1e6;

/// Why a request failed.
pub enum Failure {
    /// The gRPC status the server (or the transport) ended the call with.
    Status(Status),
    /// An answer that broke the protocol: no summary first, or volume bytes missing.
    BadAnswer(String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

impl Failure {
    /// What failures are counted under: the gRPC code's name (`RESOURCE_EXHAUSTED`) or `BAD_ANSWER`.
    fn name(&self) -> String {
        match self {
            Failure::Status(status) => code_name(status.code()),
            Failure::BadAnswer(_) => "BAD_ANSWER".to_string(),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Status(status) => status.message(),
            Failure::BadAnswer(message) => message,
        }
    }
}

/// One request's result and the gRPC message bytes it moved each way.
pub struct Outcome {
    pub result: Result<(), Failure>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The requests so far.
#[derive(Default)]
pub struct Tally {
    /// Measured requests due to start; each ends ok, failed or dropped.
    pub scheduled: u64,
    /// Requests started and not yet finished, warm-up included.
    pub in_flight: u64,
    /// Requests sent during the warm-up, counted nowhere else.
    pub warmup: u64,
    pub ok: u64,
    pub failed: u64,
    /// Open loop: requests never sent because --concurrency others were still in flight when
    /// the test ended.
    pub dropped: u64,
    /// Open loop: requests that started well after their time (the client fell behind, or
    /// waited for one of the --concurrency places).
    pub late: u64,
    latencies_ms: Vec<f64>,
    /// Failures by name: how many, and the first one's message.
    errors: BTreeMap<String, (u64, String)>,
    bytes_sent: u64,
    bytes_received: u64,
}

impl Tally {
    /// Counts a finished request, `latency` from when it was due to start; a warm-up request
    /// (`measured` false) counts only as such.
    pub fn record(&mut self, measured: bool, latency: Duration, outcome: Outcome) {
        self.in_flight -= 1;
        if !measured {
            self.warmup += 1;
            return;
        }
        self.bytes_sent += outcome.bytes_sent;
        self.bytes_received += outcome.bytes_received;
        match outcome.result {
            Ok(()) => {
                self.ok += 1;
                self.latencies_ms.push(latency.as_secs_f64() * 1e3);
            }
            Err(failure) => {
                self.failed += 1;
                let (count, _) =
                    self.errors.entry(failure.name()).or_insert_with(|| (0, failure.message().to_string()));
                *count += 1;
            }
        }
    }

    /// The progress line after `elapsed` (warm-up included), given `ok_before`, the requests
    /// that were ok a second ago.
    pub fn progress_line(&self, elapsed: Duration, warming_up: bool, ok_before: u64) -> String {
        let seconds = elapsed.as_secs_f64();
        if warming_up {
            return format!("warm-up {seconds:.0} s: {} answered, {} in flight", self.warmup, self.in_flight);
        }
        let (ok, failed, in_flight) = (self.ok, self.failed, self.in_flight);
        format!("load {seconds:.0} s: {ok} ok (+{}), {failed} failed, {in_flight} in flight", ok - ok_before)
    }
}

/// How the load was applied.
#[derive(Debug, Serialize)]
pub struct Setup {
    /// "closed loop" or "open loop".
    pub mode: &'static str,
    /// Workers (closed loop), or the most requests in flight (open loop).
    pub concurrency: usize,
    /// HTTP/2 connections the requests were spread over.
    pub connections: usize,
    /// Open loop: requests started a second.
    pub rate_per_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub setup: Setup,
    /// The measured time: from the end of the warm-up until the last request finished.
    pub duration_s: f64,
    pub requests: Requests,
    pub throughput: Throughput,
    /// Of the successful requests; `null` when none succeeded.
    pub latency_ms: Option<Percentiles>,
    /// Failed requests by gRPC status code name, e.g. `"RESOURCE_EXHAUSTED": 12`.
    pub errors: BTreeMap<String, u64>,
    /// gRPC message bytes of the measured requests, failed ones included.
    pub bytes: Bytes,
    /// The first message of each kind of error, for the table.
    #[serde(skip)]
    error_examples: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Requests {
    pub scheduled: u64,
    pub ok: u64,
    pub failed: u64,
    pub dropped: u64,
    pub late: u64,
    /// Sent before the measurement and not counted.
    pub warmup: u64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Successful requests a second.
    pub requests_per_s: f64,
    /// Upload and download, 10^6 bytes a second.
    pub mb_per_s_up: f64,
    pub mb_per_s_down: f64,
}

#[derive(Debug, Serialize)]
pub struct Bytes {
    pub sent: u64,
    pub received: u64,
}

impl Report {
    /// The report of `tally` over the measured time `measured`.
    pub fn new(setup: Setup, mut tally: Tally, measured: Duration) -> Self {
        // A run too short to time must not divide by zero.
        let seconds = measured.as_secs_f64().max(1e-9);
        Report {
            setup,
            duration_s: measured.as_secs_f64(),
            throughput: Throughput {
                requests_per_s: tally.ok as f64 / seconds,
                mb_per_s_up: tally.bytes_sent as f64 / MB / seconds,
                mb_per_s_down: tally.bytes_received as f64 / MB / seconds,
            },
            latency_ms: Percentiles::of(&mut tally.latencies_ms),
            errors: tally.errors.iter().map(|(name, (count, _))| (name.clone(), *count)).collect(),
            error_examples: tally.errors.into_iter().map(|(name, (_, message))| (name, message)).collect(),
            bytes: Bytes { sent: tally.bytes_sent, received: tally.bytes_received },
            requests: Requests {
                scheduled: tally.scheduled,
                ok: tally.ok,
                failed: tally.failed,
                dropped: tally.dropped,
                late: tally.late,
                warmup: tally.warmup,
            },
        }
    }
}

/// The table printed on stdout.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let Setup { mode, concurrency, connections, rate_per_s } = &self.setup;
        match rate_per_s {
            Some(rate) => writeln!(f, "mode        {mode}: {rate} req/s, at most {concurrency} in flight")?,
            None => writeln!(f, "mode        {mode}: {concurrency} workers")?,
        }
        writeln!(f, "connections {connections}")?;
        writeln!(f, "duration    {:.2} s ({} warm-up requests not counted)", self.duration_s, self.requests.warmup)?;
        let Requests { scheduled, ok, failed, dropped, late, .. } = &self.requests;
        writeln!(f, "requests    {ok} of {scheduled} ok, {failed} failed, {dropped} dropped, {late} late")?;
        let Throughput { requests_per_s, mb_per_s_up, mb_per_s_down } = &self.throughput;
        writeln!(f, "throughput  {requests_per_s:.2} req/s, {mb_per_s_up:.2} MB/s up, {mb_per_s_down:.2} MB/s down")?;
        match &self.latency_ms {
            Some(Percentiles { p50, p90, p99, max, mean }) => {
                writeln!(f, "latency ms  p50 {p50:.1}, p90 {p90:.1}, p99 {p99:.1}, max {max:.1}, mean {mean:.1}")?
            }
            None => writeln!(f, "latency ms  none: no request succeeded")?,
        }
        writeln!(f, "bytes       {} sent, {} received", self.bytes.sent, self.bytes.received)?;
        if self.errors.is_empty() {
            writeln!(f, "errors      none")?;
        }
        for (name, count) in &self.errors {
            writeln!(f, "errors      {name}: {count} (first: {})", self.error_examples[name])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: Result<(), Failure>) -> Outcome {
        Outcome { result, bytes_sent: 1000, bytes_received: 3000 }
    }

    fn tally_of(outcomes: Vec<(bool, u64, Result<(), Failure>)>) -> Tally {
        let mut tally = Tally { in_flight: outcomes.len() as u64, ..Tally::default() };
        for (measured, latency_ms, result) in outcomes {
            tally.record(measured, Duration::from_millis(latency_ms), outcome(result));
        }
        tally
    }

    #[test]
    fn errors_are_counted_by_the_name_of_their_code() {
        let busy = || Err(Status::resource_exhausted("server busy").into());
        let tally = tally_of(vec![
            (true, 10, busy()),
            (true, 10, Ok(())),
            (true, 10, busy()),
            (true, 10, Err(Failure::BadAnswer("no summary".into()))),
        ]);
        let report = Report::new(
            Setup { mode: "closed loop", concurrency: 2, connections: 2, rate_per_s: None },
            tally,
            Duration::from_secs(1),
        );
        assert_eq!(report.errors, BTreeMap::from([("BAD_ANSWER".into(), 1), ("RESOURCE_EXHAUSTED".into(), 2)]));
        assert_eq!((report.requests.ok, report.requests.failed), (1, 3));
        assert!(report.to_string().contains("RESOURCE_EXHAUSTED: 2 (first: server busy)"), "{report}");
    }

    #[test]
    fn warm_up_requests_count_only_as_such() {
        let tally = tally_of(vec![(false, 500, Ok(())), (true, 20, Ok(())), (true, 40, Ok(()))]);
        assert_eq!(tally.in_flight, 0);
        let report = Report::new(
            Setup { mode: "closed loop", concurrency: 1, connections: 1, rate_per_s: None },
            tally,
            Duration::from_secs(2),
        );
        assert_eq!((report.requests.ok, report.requests.warmup), (2, 1));
        assert_eq!(report.latency_ms.unwrap().max, 40.0);
        assert_eq!((report.bytes.sent, report.bytes.received), (2000, 6000));
        assert_eq!(report.throughput.requests_per_s, 1.0);
        assert_eq!((report.throughput.mb_per_s_up, report.throughput.mb_per_s_down), (0.001, 0.003));
    }
}
