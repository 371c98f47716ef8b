//! `fracmap load`: a load test of a server's Segment. One request is read and encoded once,
//! then sent again and again, each time with its whole answer awaited (summary and every
//! volume chunk):
//!
//! - closed loop (the default): `--concurrency` workers, each sending its next request when
//!   its last is answered;
//! - open loop (`--rate`): requests start on a fixed schedule whatever the answers, at most
//!   `--concurrency` in flight, their latency measured from when they were due, so that a
//!   slow server cannot hide its delays by slowing the client down (coordinated omission).
//!
//! [`results`] counts the requests and prints the report; [`latency`] has the percentiles.

mod latency;
mod results;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{ArgGroup, Args};
use fracmap_core::fsutil::write_atomic;
use fracmap_proto::segment_request::Part as RequestPart;
use fracmap_proto::segment_response::Part as ResponsePart;
use fracmap_proto::{SegmentHeader, SegmentRequest, Vertebra};
use prost::Message;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::boxes;
use crate::connection::{Client, ConnectArgs, Connection, connect};
use crate::info::with_deadline;
use crate::segment::Upload;
use results::{Failure, Outcome, Report, Setup, Tally};

/// How long after its time an open-loop request may start before it counts as late: more
/// than the timer's jitter, less than a request.
const LATE_AFTER: Duration = Duration::from_millis(10);
/// The measured time when neither --duration nor --requests bounds the test.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

#[derive(Args)]
#[command(group(ArgGroup::new("which vertebrae").required(true).args(["vertebrae", "boxes"])))]
pub struct LoadArgs {
    /// The CT every request sends, read once: NIfTI-1, .nii or .nii.gz.
    #[arg(long, value_name = "CT.nii[.gz]")]
    input: PathBuf,
    /// A VerSe vertebra label map on the CT's grid, sent with every request.
    #[arg(long, value_name = "LABELS.nii[.gz]")]
    vertebrae: Option<PathBuf>,
    /// A vertebra by its body box in CT voxels, half-open; repeat for more.
    #[arg(long = "box", value_name = "[LABEL=]z0:z1,y0:y1,x0:x1", value_parser = boxes::parse_vertebra)]
    boxes: Vec<Vertebra>,
    /// The segmentation model (see `fracmap models`); default: the server's.
    #[arg(long)]
    model: Option<String>,
    /// Read the volumes here and send float32 voxels rather than the NIfTI files' bytes.
    #[arg(long)]
    raw: bool,
    /// Bytes per uploaded chunk (at most 4 MB: gRPC's default message limit).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=4_000_000))]
    chunk_bytes: u32,
    /// Ask for the summary alone, without the volumes (the header's skip_volumes).
    #[arg(long)]
    summary_only: bool,
    /// Requests in flight at once: the workers of a closed loop, the most an open loop allows.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// HTTP/2 connections the requests share, round robin, at most --concurrency; default:
    /// one each, since one connection's flow control would serialize the uploads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: Option<u32>,
    /// Requests started a second, on a fixed schedule whatever the answers (open loop);
    /// without it, each worker sends its next request when its last is answered.
    #[arg(long, value_name = "PER_SECOND", value_parser = |text: &str| parse_number(text, "rate", false))]
    rate: Option<f64>,
    /// Seconds to measure; default 30, or until --requests are done when that is given.
    #[arg(long, value_name = "SECONDS", value_parser = |text: &str| parse_number(text, "duration", false))]
    duration: Option<f64>,
    /// Requests to measure, at most.
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Seconds of requests sent first and not counted (connections, caches, the server's
    /// first runs).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, value_parser = |text: &str| parse_number(text, "warm-up", true))]
    warmup: f64,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// A finite number of seconds (or requests a second) above 0, or from 0 when `zero_too`.
fn parse_number(text: &str, what: &str, zero_too: bool) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && (x > 0.0 || (zero_too && x == 0.0)) => Ok(x),
        _ if zero_too => Err(format!("{text:?} is not a {what} of 0 or more")),
        _ => Err(format!("{text:?} is not a {what} above 0")),
    }
}

/// Runs the load test against the server of `first` (more connections like it when asked)
/// and reports. Failed requests are part of the measurement; only a test in which none
/// succeeded is an error.
pub async fn load(first: Connection, connect_args: &ConnectArgs, args: LoadArgs, timeout: Duration) -> Result<()> {
    let request = Arc::new(PreparedRequest::read(&args)?);
    let concurrency = args.concurrency as usize;
    let connections = args.connections.map_or(concurrency, |k| (k as usize).min(concurrency));
    let mut clients = vec![first.fracmap()];
    for _ in 1..connections {
        clients.push(connect(connect_args).await?.fracmap());
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let duration = match (args.duration, args.requests) {
        (Some(seconds), _) => Some(Duration::from_secs_f64(seconds)),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_DURATION),
    };
    let plan = Plan { start, measure_from, until: duration.map(|d| measure_from + d), requests: args.requests };
    let test = Arc::new(LoadTest { request, plan, timeout, tally: Mutex::new(Tally::default()) });
    let progress = tokio::spawn(show_progress(Arc::clone(&test)));
    match args.rate {
        Some(rate) => open_loop(&test, &clients, concurrency, rate).await,
        None => closed_loop(&test, &clients, concurrency).await,
    }
    progress.abort();
    let measured = Instant::now().saturating_duration_since(measure_from);

    let mode = if args.rate.is_some() { "open loop" } else { "closed loop" };
    let setup = Setup { mode, concurrency, connections, rate_per_s: args.rate };
    let tally = std::mem::take(&mut *test.tally());
    let report = Report::new(setup, tally, measured);
    print!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).context("the report as JSON")?;
        write_atomic(path, &json).with_context(|| format!("--json {}: cannot write", path.display()))?;
    }
    ensure!(
        report.requests.ok > 0,
        "not a single request succeeded ({} failed, {} dropped)",
        report.requests.failed,
        report.requests.dropped
    );
    Ok(())
}

/// The request every call sends, read and encoded once so that the test measures the server,
/// not this machine's disk: its messages, and each one's encoded size.
struct PreparedRequest {
    messages: Vec<SegmentRequest>,
    sizes: Vec<u64>,
}

impl PreparedRequest {
    fn read(args: &LoadArgs) -> Result<Self> {
        let mut uploads = vec![Upload::open(&args.input, args.raw, RequestPart::CtChunk)?];
        if let Some(labels) = &args.vertebrae {
            uploads.push(Upload::open(labels, args.raw, RequestPart::VertebraLabelsChunk)?);
        }
        let header = SegmentHeader {
            ct: Some(uploads[0].description.clone()),
            model: args.model.clone().unwrap_or_default(),
            vertebrae: args.boxes.clone(),
            vertebra_labels: uploads.get(1).map(|labels| labels.description.clone()),
            skip_volumes: args.summary_only,
            ..SegmentHeader::default()
        };
        let mut messages = vec![SegmentRequest { part: Some(RequestPart::Header(header)) }];
        for upload in uploads {
            let part = upload.part;
            upload.send_chunks(args.chunk_bytes as usize, |chunk| {
                messages.push(SegmentRequest { part: Some(part(chunk)) });
                true
            })?;
        }
        let sizes = messages.iter().map(|message| message.encoded_len() as u64).collect();
        Ok(PreparedRequest { messages, sizes })
    }

    /// Sends the request and reads the whole answer, within `timeout`.
    async fn send(self: &Arc<Self>, client: Client, timeout: Duration) -> Outcome {
        let sent = Arc::new(AtomicU64::new(0));
        let mut received = 0;
        let result = tokio::time::timeout(timeout, self.call(client, Arc::clone(&sent), &mut received, timeout))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!("no complete answer within {} s (--timeout)", timeout.as_secs()))
                    .into())
            });
        Outcome { result, bytes_sent: sent.load(Ordering::Relaxed), bytes_received: received }
    }

    /// Calls Segment, counting the bytes of the messages as they go into `sent` and as they
    /// come into `received`; checks that the summary comes first and every volume byte it
    /// announced follows.
    async fn call(
        self: &Arc<Self>,
        mut client: Client,
        sent: Arc<AtomicU64>,
        received: &mut u64,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let request = Arc::clone(self);
        // Each message is copied only when the call takes it, so the request is never held twice.
        let messages = tokio_stream::iter(0..request.messages.len()).map(move |i| {
            sent.fetch_add(request.sizes[i], Ordering::Relaxed);
            request.messages[i].clone()
        });
        let mut answer = client.segment(with_deadline(messages, timeout)).await?.into_inner();
        let mut announced = None;
        let mut volume_bytes = 0;
        while let Some(message) = answer.message().await? {
            *received += message.encoded_len() as u64;
            match (message.part, announced) {
                (Some(ResponsePart::Summary(summary)), None) => {
                    announced = Some(summary.outputs.iter().map(|output| output.total_bytes).sum::<u64>());
                }
                (Some(ResponsePart::Chunk(chunk)), Some(_)) => volume_bytes += chunk.data.len() as u64,
                _ => return Err(Failure::BadAnswer("not a summary followed by volume chunks".to_string())),
            }
        }
        match announced {
            Some(total) if total == volume_bytes => Ok(()),
            Some(total) => Err(Failure::BadAnswer(format!("{volume_bytes} of the {total} volume bytes announced"))),
            None => Err(Failure::BadAnswer("no summary".to_string())),
        }
    }
}

/// When requests may start and which are measured.
struct Plan {
    start: Instant,
    /// The end of the warm-up: requests due from then on are measured.
    measure_from: Instant,
    /// No request starts from then on; `None`: --requests alone ends the test.
    until: Option<Instant>,
    /// Measured requests, at most.
    requests: Option<u64>,
}

impl Plan {
    /// Whether a request due at `due`, after `scheduled` measured ones, starts: `Some(true)`
    /// measured, `Some(false)` for the warm-up, `None` when the test is over.
    fn admit(&self, due: Instant, scheduled: u64) -> Option<bool> {
        if self.until.is_some_and(|until| due >= until) {
            return None;
        }
        let measured = due >= self.measure_from;
        if measured && self.requests.is_some_and(|limit| scheduled >= limit) {
            return None;
        }
        Some(measured)
    }
}

/// What the workers share.
struct LoadTest {
    request: Arc<PreparedRequest>,
    plan: Plan,
    timeout: Duration,
    tally: Mutex<Tally>,
}

impl LoadTest {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        // A worker that panicked leaves the counts whole: each update is a few additions.
        self.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a request due at `due` (see [`Plan::admit`]) and counts it in flight.
    fn admit(&self, due: Instant) -> Option<bool> {
        let mut tally = self.tally();
        let measured = self.plan.admit(due, tally.scheduled)?;
        tally.scheduled += u64::from(measured);
        tally.in_flight += 1;
        Some(measured)
    }

    /// Sends the request on `client` and counts its outcome, its latency from `due`.
    async fn send(&self, client: Client, measured: bool, due: Instant) {
        let outcome = self.request.send(client, self.timeout).await;
        self.tally().record(measured, due.elapsed(), outcome);
    }
}

/// Each worker sends its next request when its last is answered, until the plan ends.
async fn closed_loop(test: &Arc<LoadTest>, clients: &[Client], workers: usize) {
    let mut running = JoinSet::new();
    for worker in 0..workers {
        let (test, client) = (Arc::clone(test), clients[worker % clients.len()].clone());
        running.spawn(async move {
            loop {
                let due = Instant::now();
                let Some(measured) = test.admit(due) else { break };
                test.send(client.clone(), measured, due).await;
            }
        });
    }
    running.join_all().await;
}

/// Starts a request every 1/`rate` s, when fewer than `most_in_flight` are in flight; one
/// that finds no place before the plan ends is dropped.
async fn open_loop(test: &Arc<LoadTest>, clients: &[Client], most_in_flight: usize, rate: f64) {
    let places = Arc::new(Semaphore::new(most_in_flight));
    let mut running = JoinSet::new();
    for slot in 0u64.. {
        let due = test.plan.start + Duration::from_secs_f64(slot as f64 / rate);
        let Some(measured) = test.admit(due) else { break };
        tokio::time::sleep_until(due).await;
        let place = async { Arc::clone(&places).acquire_owned().await.expect("the places are never closed") };
        let place = match test.plan.until {
            // A place that frees once the test is over comes too late.
            Some(until) => tokio::time::timeout_at(until, place).await.ok().filter(|_| Instant::now() < until),
            None => Some(place.await),
        };
        let Some(place) = place else {
            let mut tally = test.tally();
            tally.in_flight -= 1;
            tally.dropped += u64::from(measured);
            continue;
        };
        if measured && due.elapsed() > LATE_AFTER {
            test.tally().late += 1;
        }
        let (test, client) = (Arc::clone(test), clients[slot as usize % clients.len()].clone());
        running.spawn(async move {
            test.send(client, measured, due).await;
            drop(place);
        });
    }
    running.join_all().await;
}

/// A line a second on stderr.
async fn show_progress(test: Arc<LoadTest>) {
    let second = Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at(test.plan.start + second, second);
    let mut ok_before = 0;
    loop {
        let now = ticks.tick().await;
        let tally = test.tally();
        let line = tally.progress_line(now - test.plan.start, now < test.plan.measure_from, ok_before);
        eprintln!("{line}");
        ok_before = tally.ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(warmup_ms: u64, measure_ms: Option<u64>, requests: Option<u64>) -> Plan {
        let start = Instant::now();
        let measure_from = start + Duration::from_millis(warmup_ms);
        let until = measure_ms.map(|ms| measure_from + Duration::from_millis(ms));
        Plan { start, measure_from, until, requests }
    }

    fn at(plan: &Plan, ms: u64) -> Instant {
        plan.start + Duration::from_millis(ms)
    }

    #[test]
    fn requests_due_in_the_warm_up_start_unmeasured() {
        let plan = plan(100, Some(1000), None);
        assert_eq!(plan.admit(at(&plan, 0), 0), Some(false));
        assert_eq!(plan.admit(at(&plan, 99), 0), Some(false));
        assert_eq!(plan.admit(at(&plan, 100), 0), Some(true));
        assert_eq!(plan.admit(at(&plan, 1099), 500), Some(true));
        assert_eq!(plan.admit(at(&plan, 1100), 0), None, "the end of the measured time");
    }

    #[test]
    fn the_request_count_ends_the_test_but_not_the_warm_up() {
        let plan = plan(100, None, Some(3));
        assert_eq!(plan.admit(at(&plan, 50), 3), Some(false));
        assert_eq!(plan.admit(at(&plan, 5000), 2), Some(true));
        assert_eq!(plan.admit(at(&plan, 5000), 3), None);
    }

    #[test]
    fn rates_and_seconds_are_finite_and_positive() {
        assert_eq!(parse_number("2.5", "rate", false), Ok(2.5));
        assert_eq!(parse_number("0", "warm-up", true), Ok(0.0));
        assert!(parse_number("0", "rate", false).unwrap_err().contains("above 0"));
        for text in ["-1", "inf", "NaN", "x"] {
            assert!(parse_number(text, "duration", true).is_err(), "{text}");
        }
    }
}
