//! Prometheus metrics of one server: what it counts ([`Metrics`]), the text exposition
//! format 0.0.4 it renders by hand, and [`serve_metrics`], the small HTTP endpoint that
//! Prometheus scrapes beside the gRPC port.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Upper bounds (s) of the duration histograms' buckets: from a 1 ms decode to a
/// 5 min segmentation on CPU.
const DURATION_BUCKETS: [f64; 17] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Counters, gauges and histograms of one server; shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Finished RPCs by method name.
    requests: Mutex<BTreeMap<String, MethodStats>>,
    /// Pipeline stage durations by stage name.
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
    queue_depth: AtomicI64,
    sessions_busy: AtomicI64,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    workers: AtomicUsize,
    queue_capacity: AtomicUsize,
    models_loaded: AtomicUsize,
}

/// The finished RPCs of one method.
#[derive(Debug, Default)]
struct MethodStats {
    /// Count by canonical status code name (`"OK"`, ...).
    codes: BTreeMap<&'static str, u64>,
    duration: Histogram,
}

/// Observations in [`DURATION_BUCKETS`]; counts per bucket, made cumulative when rendered.
#[derive(Debug, Default)]
struct Histogram {
    /// `bucket_counts[i]`: observations in `(DURATION_BUCKETS[i - 1], DURATION_BUCKETS[i]]`.
    bucket_counts: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        // `max` also turns NaN into 0, which would otherwise poison the sum for good.
        let seconds = seconds.max(0.0);
        if let Some(bucket) = DURATION_BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.bucket_counts[bucket] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One finished RPC: `method` e.g. `"Segment"`, `code` its gRPC status, `seconds` its wall time.
    pub fn request_finished(&self, method: &str, code: tonic::Code, seconds: f64) {
        let mut requests = lock(&self.requests);
        // Looked up before inserting so that the usual call allocates nothing.
        let stats = match requests.get_mut(method) {
            Some(stats) => stats,
            None => requests.entry(method.to_owned()).or_default(),
        };
        *stats.codes.entry(code_name(code)).or_default() += 1;
        stats.duration.observe(seconds);
    }

    /// Time of one pipeline stage of one request; `stage` one of "receive", "decode", "queue",
    /// "crop", "vae", "unet" (a U-Net) or "p2p" (a slice model's runs), "paste", "mask", "send".
    pub fn observe_stage(&self, stage: &'static str, seconds: f64) {
        lock(&self.stages).entry(stage).or_default().observe(seconds);
    }

    /// Requests waiting for a worker (queue depth) went up or down by `delta`.
    pub fn queued_changed(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Relaxed);
    }

    /// Segmentations running (sessions busy) went up or down by `delta`.
    pub fn busy_changed(&self, delta: i64) {
        self.sessions_busy.fetch_add(delta, Relaxed);
    }

    /// Bytes received in request chunks.
    pub fn bytes_received(&self, n: u64) {
        self.received_bytes.fetch_add(n, Relaxed);
    }

    /// Bytes sent in response chunks.
    pub fn bytes_sent(&self, n: u64) {
        self.sent_bytes.fetch_add(n, Relaxed);
    }

    /// Static facts at start-up: segmentation workers and the capacity of their queue.
    pub fn set_capacity(&self, workers: usize, queue: usize) {
        self.workers.store(workers, Relaxed);
        self.queue_capacity.store(queue, Relaxed);
    }

    /// Static fact at start-up: models loaded into sessions.
    pub fn set_models_loaded(&self, n: usize) {
        self.models_loaded.store(n, Relaxed);
    }

    /// Counts one request as queued until the guard is dropped.
    pub fn track_queued(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self, Metrics::queued_changed)
    }

    /// Counts one session as busy until the guard is dropped.
    pub fn track_busy(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self, Metrics::busy_changed)
    }

    /// The exposition text (Content-Type `text/plain; version=0.0.4`): families sorted by
    /// name, series by label values.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write_exposition(&mut out).expect("writing to a String cannot fail");
        out
    }

    fn write_exposition(&self, out: &mut String) -> fmt::Result {
        let requests = lock(&self.requests);
        let stages = lock(&self.stages);
        let name = "fracmap_models_loaded";
        write_single(out, name, "gauge", "Models loaded into sessions.", self.models_loaded.load(Relaxed))?;
        let name = "fracmap_queue_capacity";
        write_single(out, name, "gauge", "Requests that may wait for a worker.", self.queue_capacity.load(Relaxed))?;
        let name = "fracmap_queue_depth";
        write_single(out, name, "gauge", "Requests waiting for a worker.", self.queue_depth.load(Relaxed))?;
        let name = "fracmap_received_bytes_total";
        write_single(out, name, "counter", "Bytes received in request chunks.", self.received_bytes.load(Relaxed))?;

        let name = "fracmap_request_duration_seconds";
        write_header(out, name, "histogram", "Wall time of finished RPCs by method.")?;
        for (method, stats) in requests.iter() {
            write_histogram(out, name, &format!("method=\"{}\"", escape_label(method)), &stats.duration)?;
        }
        let name = "fracmap_requests_total";
        write_header(out, name, "counter", "Finished RPCs by method and gRPC status code.")?;
        for (method, stats) in requests.iter() {
            for (code, count) in &stats.codes {
                writeln!(out, "{name}{{method=\"{}\",code=\"{code}\"}} {count}", escape_label(method))?;
            }
        }

        let name = "fracmap_sent_bytes_total";
        write_single(out, name, "counter", "Bytes sent in response chunks.", self.sent_bytes.load(Relaxed))?;
        let name = "fracmap_sessions_busy";
        write_single(out, name, "gauge", "Segmentations running.", self.sessions_busy.load(Relaxed))?;

        let name = "fracmap_stage_duration_seconds";
        write_header(out, name, "histogram", "Time of one pipeline stage of one request.")?;
        for (stage, histogram) in stages.iter() {
            write_histogram(out, name, &format!("stage=\"{}\"", escape_label(stage)), histogram)?;
        }

        let name = "fracmap_workers";
        write_single(out, name, "gauge", "Segmentation workers.", self.workers.load(Relaxed))
    }
}

/// Holds one gauge up by one until dropped, so that early returns and errors cannot leave
/// it counting a request that is gone.
#[must_use = "the gauge goes back down when the guard is dropped"]
pub struct GaugeGuard {
    metrics: Arc<Metrics>,
    change: fn(&Metrics, i64),
}

impl GaugeGuard {
    fn new(metrics: &Arc<Metrics>, change: fn(&Metrics, i64)) -> Self {
        change(metrics, 1);
        GaugeGuard { metrics: Arc::clone(metrics), change }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.change)(&self.metrics, -1);
    }
}

/// A poisoned lock still holds valid counts; metrics must never take the service down.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_header(out: &mut String, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// A family of one series without labels.
fn write_single(out: &mut String, name: &str, kind: &str, help: &str, value: impl fmt::Display) -> fmt::Result {
    write_header(out, name, kind, help)?;
    writeln!(out, "{name} {value}")
}

/// One histogram series; `labels` already escaped, e.g. `stage="unet"`.
fn write_histogram(out: &mut String, name: &str, labels: &str, histogram: &Histogram) -> fmt::Result {
    let mut cumulative = 0;
    for (bound, count) in DURATION_BUCKETS.iter().zip(histogram.bucket_counts) {
        cumulative += count;
        writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", float(*bound))?;
    }
    writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count)?;
    writeln!(out, "{name}_sum{{{labels}}} {}", float(histogram.sum))?;
    writeln!(out, "{name}_count{{{labels}}} {}", histogram.count)
}

/// Rust prints 1.0 as "1" like Go does, but infinity as "inf" where Prometheus wants "+Inf".
fn float(value: f64) -> String {
    match value {
        f64::INFINITY => "+Inf".to_owned(),
        f64::NEG_INFINITY => "-Inf".to_owned(),
        _ if value.is_nan() => "NaN".to_owned(),
        _ => value.to_string(),
    }
}

/// A label value as the format quotes it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The canonical name of a gRPC status code, as other gRPC servers' metrics label it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time one connection may take from accept to close, so that a silent client holds
/// nothing for long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, say), so that the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves GET /metrics (the exposition) and GET /healthz ("ok") over plain HTTP/1.1 on
/// `listener` until `shutdown` completes, one request per connection; anything else is 404,
/// a method other than GET 405. Each connection runs in its own task under a deadline, so a
/// bad or slow client does not block other scrapes; those still open at shutdown are dropped.
/// Failed accepts are logged and retried rather than returned: a metrics endpoint that stops
/// would go unnoticed until a scrape is missed.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            // Reaps finished connections so that the set does not grow.
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(answer_connection(stream, Arc::clone(&metrics)));
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

async fn answer_connection(mut stream: TcpStream, metrics: Arc<Metrics>) {
    let answered = tokio::time::timeout(CONNECTION_DEADLINE, answer(&mut stream, &metrics)).await;
    if let Err(error) = answered.map_err(io::Error::from).and_then(|answered| answered) {
        tracing::debug!(%error, "metrics endpoint: connection closed without an answer");
    }
}

async fn answer(stream: &mut TcpStream, metrics: &Metrics) -> io::Result<()> {
    let head = read_head(stream).await?;
    stream.write_all(&response(&head, metrics)).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends a request head. All of it, not only the request
/// line: closing a socket with unread input resets it, and the client may lose the answer.
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head over 8 KiB"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The whole HTTP response to one request head.
fn response(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let request_line = head.split(|&byte| byte == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let parts: Vec<&str> = request_line.split_ascii_whitespace().collect();
    let (status, content_type, body) = match parts[..] {
        [method, target, version] if version.starts_with("HTTP/1.") => {
            let path = target.split('?').next().unwrap_or_default();
            match (method, path) {
                ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
                ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
                ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_owned()),
                _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
            }
        }
        _ => ("400 Bad Request", "text/plain; charset=utf-8", "bad request\n".to_owned()),
    };
    let allow = if status.starts_with("405") { "Allow: GET\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn assert_has_line(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no line `{line}` in:\n{text}");
    }

    #[test]
    fn stage_histogram_buckets_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::new();
        // Exact binary fractions, so that the sum prints exactly.
        metrics.observe_stage("unet", 0.00390625);
        metrics.observe_stage("unet", 0.5);
        metrics.observe_stage("unet", 400.0);
        let text = metrics.render();
        let series = |le: &str, count: u64| {
            format!("fracmap_stage_duration_seconds_bucket{{stage=\"unet\",le=\"{le}\"}} {count}")
        };
        assert_has_line(&text, &series("0.001", 0));
        assert_has_line(&text, &series("0.0025", 0));
        assert_has_line(&text, &series("0.005", 1));
        assert_has_line(&text, &series("0.25", 1));
        // A bound is inclusive: 0.5 falls in le="0.5".
        assert_has_line(&text, &series("0.5", 2));
        assert_has_line(&text, &series("300", 2));
        assert_has_line(&text, &series("+Inf", 3));
        assert_has_line(&text, "fracmap_stage_duration_seconds_sum{stage=\"unet\"} 400.50390625");
        assert_has_line(&text, "fracmap_stage_duration_seconds_count{stage=\"unet\"} 3");
        assert_eq!(text.lines().filter(|l| l.starts_with("fracmap_stage_duration_seconds_bucket")).count(), 18);
    }

    #[test]
    fn requests_are_counted_by_method_and_canonical_code() {
        let metrics = Metrics::new();
        metrics.request_finished("Segment", Code::Ok, 2.0);
        metrics.request_finished("Segment", Code::Ok, 3.0);
        metrics.request_finished("Segment", Code::ResourceExhausted, 0.0);
        metrics.request_finished("ListModels", Code::InvalidArgument, 0.0);
        let text = metrics.render();
        assert_has_line(&text, "fracmap_requests_total{method=\"Segment\",code=\"OK\"} 2");
        assert_has_line(&text, "fracmap_requests_total{method=\"Segment\",code=\"RESOURCE_EXHAUSTED\"} 1");
        assert_has_line(&text, "fracmap_requests_total{method=\"ListModels\",code=\"INVALID_ARGUMENT\"} 1");
        assert_has_line(&text, "fracmap_request_duration_seconds_bucket{method=\"Segment\",le=\"2.5\"} 2");
        assert_has_line(&text, "fracmap_request_duration_seconds_sum{method=\"Segment\"} 5");
        assert_has_line(&text, "fracmap_request_duration_seconds_count{method=\"Segment\"} 3");
        assert_has_line(&text, "fracmap_request_duration_seconds_count{method=\"ListModels\"} 1");
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.request_finished("a\"b\\c\nd", Code::Ok, 0.0);
        assert_has_line(&metrics.render(), r#"fracmap_requests_total{method="a\"b\\c\nd",code="OK"} 1"#);
    }

    #[test]
    fn gauges_go_up_and_down() {
        let metrics = Arc::new(Metrics::new());
        metrics.queued_changed(3);
        metrics.queued_changed(-1);
        metrics.busy_changed(1);
        let busy = metrics.track_busy();
        assert_has_line(&metrics.render(), "fracmap_queue_depth 2");
        assert_has_line(&metrics.render(), "fracmap_sessions_busy 2");
        drop(busy);
        metrics.busy_changed(-1);
        assert_has_line(&metrics.render(), "fracmap_sessions_busy 0");
        {
            let _queued = metrics.track_queued();
            assert_has_line(&metrics.render(), "fracmap_queue_depth 3");
        }
        assert_has_line(&metrics.render(), "fracmap_queue_depth 2");
    }

    #[test]
    fn static_facts_and_byte_counters_are_rendered() {
        let metrics = Metrics::new();
        metrics.set_capacity(2, 8);
        metrics.set_models_loaded(3);
        metrics.bytes_received(100);
        metrics.bytes_received(28);
        metrics.bytes_sent(7);
        let text = metrics.render();
        assert_has_line(&text, "fracmap_workers 2");
        assert_has_line(&text, "fracmap_queue_capacity 8");
        assert_has_line(&text, "fracmap_models_loaded 3");
        assert_has_line(&text, "fracmap_received_bytes_total 128");
        assert_has_line(&text, "fracmap_sent_bytes_total 7");
    }

    #[test]
    fn fresh_metrics_declare_every_family() {
        let text = Metrics::new().render();
        for (family, kind) in [
            ("fracmap_models_loaded", "gauge"),
            ("fracmap_queue_capacity", "gauge"),
            ("fracmap_queue_depth", "gauge"),
            ("fracmap_received_bytes_total", "counter"),
            ("fracmap_request_duration_seconds", "histogram"),
            ("fracmap_requests_total", "counter"),
            ("fracmap_sent_bytes_total", "counter"),
            ("fracmap_sessions_busy", "gauge"),
            ("fracmap_stage_duration_seconds", "histogram"),
            ("fracmap_workers", "gauge"),
        ] {
            assert_has_line(&text, &format!("# TYPE {family} {kind}"));
        }
        assert_has_line(&text, "fracmap_queue_depth 0");
    }

    #[test]
    fn exposition_follows_the_text_format() {
        let metrics = Arc::new(Metrics::new());
        metrics.request_finished("Segment", Code::Ok, 1.5);
        metrics.request_finished("a\"b\\c\nd", Code::Internal, 0.01);
        metrics.observe_stage("vae", 0.2);
        metrics.observe_stage("decode", 0.0);
        metrics.set_capacity(1, 4);
        let _busy = metrics.track_busy();
        check_exposition(&metrics.render()).unwrap();
    }

    #[test]
    fn exposition_check_rejects_malformed_text() {
        let declared = "# HELP fracmap_x X.\n# TYPE fracmap_x gauge\n";
        check_exposition(&format!("{declared}fracmap_x 1\n")).unwrap();
        for malformed in [
            format!("{declared}fracmap_x 1"),
            format!("{declared}fracmap_x one\n"),
            format!("{declared}fracmap_y 1\n"),
            format!("{declared}fracmap_x{{a=\"\\q\"}} 1\n"),
            format!("{declared}fracmap_x{{a=\"1\"b=\"2\"}} 1\n"),
            format!("{declared}fracmap_x 1\nfracmap_x 2\n"),
            format!("{declared}{declared}"),
            "# TYPE fracmap_x gauge\nfracmap_x 1\n".to_owned(),
        ] {
            assert!(check_exposition(&malformed).is_err(), "accepted:\n{malformed}");
        }
    }

    /// Checks text against the exposition format 0.0.4 line grammar: HELP then TYPE before a
    /// family's samples, families sorted and declared once, samples named after their family
    /// (with `_bucket`, `_sum`, `_count` for histograms), well-formed labels, float values,
    /// no series twice.
    fn check_exposition(text: &str) -> Result<(), String> {
        if !text.ends_with('\n') {
            return Err("text does not end with a newline".into());
        }
        let mut families: Vec<(String, String)> = Vec::new();
        let mut series = std::collections::HashSet::new();
        let mut pending_help: Option<String> = None;
        for line in text.lines() {
            let fail = |why: &str| Err(format!("{why}: `{line}`"));
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                if !is_metric_name(name) || help.is_empty() || pending_help.is_some() {
                    return fail("bad HELP");
                }
                pending_help = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let Some((name, kind)) = rest.split_once(' ') else { return fail("bad TYPE") };
                if pending_help.take().as_deref() != Some(name) {
                    return fail("TYPE without its HELP just before");
                }
                if !["counter", "gauge", "histogram"].contains(&kind) {
                    return fail("unknown type");
                }
                if families.last().is_some_and(|(last, _)| last.as_str() >= name) {
                    return fail("family out of order or declared twice");
                }
                families.push((name.to_owned(), kind.to_owned()));
            } else {
                let (name, labels, value) = parse_sample(line).ok_or(format!("bad sample: `{line}`"))?;
                let Some((family, kind)) = families.last() else { return fail("sample before any TYPE") };
                let suffix = name.strip_prefix(family.as_str());
                let allowed = match kind.as_str() {
                    "histogram" => [Some("_bucket"), Some("_sum"), Some("_count")].contains(&suffix),
                    _ => suffix == Some(""),
                };
                if !allowed || pending_help.is_some() {
                    return fail("sample outside its family");
                }
                if name.ends_with("_bucket") && !labels.iter().any(|(label, _)| label == "le") {
                    return fail("bucket without le");
                }
                if value != "+Inf" && value != "-Inf" && value != "NaN" && value.parse::<f64>().is_err() {
                    return fail("bad value");
                }
                if !series.insert((name, labels)) {
                    return fail("series twice");
                }
            }
        }
        Ok(())
    }

    fn is_metric_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// A sample's name, labels with their values unescaped, and value as written.
    type Sample = (String, Vec<(String, String)>, String);

    /// `name{label="value",...} value` into its parts.
    fn parse_sample(line: &str) -> Option<Sample> {
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            while !rest.starts_with('}') {
                let (label, after_label) = rest.split_once("=\"")?;
                let mut value = String::new();
                let mut chars = after_label.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            _ => return None,
                        },
                        (_, '\n') => return None,
                        (_, c) => value.push(c),
                    }
                };
                if !is_metric_name(label) || label.contains(':') {
                    return None;
                }
                labels.push((label.to_owned(), value));
                rest = &after_label[end + 1..];
                if let Some(next_label) = rest.strip_prefix(',') {
                    rest = next_label;
                } else if !rest.starts_with('}') {
                    return None;
                }
            }
            rest = &rest[1..];
        }
        let value = rest.strip_prefix(' ')?;
        (is_metric_name(name) && !value.is_empty() && !value.contains(' '))
            .then(|| (name.to_owned(), labels, value.to_owned()))
    }
}
