//! A real Prometheus server (Debian's `prometheus`), started by a test to scrape the agent, and
//! asked in PromQL through its HTTP API, as a fleet's dashboards and alerts ask it.
//!
//! [`Prometheus::start`] writes a scrape configuration for the given targets into a fresh
//! directory (which also holds its database), starts the server on a free loopback port and
//! returns once it is ready; the server is stopped and the directory removed when the value is
//! dropped. [`Prometheus::query`] runs an instant query.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How often the server scrapes, and evaluates: often, so that a test waits little.
pub const SCRAPE_INTERVAL: &str = "1s";

/// One sample of a query's answer: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus server, stopped when dropped.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts a server that scrapes `targets` (job `teardown`) every [`SCRAPE_INTERVAL`], and
    /// waits until it is ready (at most 60 s).
    pub fn start(targets: &[SocketAddr]) -> io::Result<Prometheus> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("teardown-prometheus-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: \
             {SCRAPE_INTERVAL}\nscrape_configs:\n  - job_name: teardown\n    static_configs:\n      \
             - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        // A free port: taken, then given back for the server (nothing else here picks ports
        // at random in the moment between).
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut p = Prometheus { child, dir, addr };
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = p.get("/-/ready") {
                if r.contains("Ready") {
                    return Ok(p);
                }
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(io::Error::other(format!(
                    "prometheus ended with {status}: {}",
                    p.log()
                )));
            }
            if Instant::now() >= end {
                return Err(io::Error::other(format!(
                    "prometheus not ready in 60 s: {}",
                    p.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's own log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The body of `GET path` (HTTP/1.0: the server closes when done).
    pub fn get(&self, path: &str) -> io::Result<String> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("not HTTP: {out}")))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!("GET {path}: {head}\n{body}")));
        }
        Ok(body.to_string())
    }

    /// The `data` of an API call, once its status is `success`.
    pub fn api(&self, path_and_query: &str) -> io::Result<serde_json::Value> {
        let body = self.get(path_and_query)?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(io::Error::other)?;
        if v["status"] != "success" {
            return Err(io::Error::other(format!("{path_and_query}: {body}")));
        }
        Ok(v["data"].clone())
    }

    /// An instant PromQL query's samples (a vector, or a scalar as one sample without labels).
    pub fn query(&self, promql: &str) -> io::Result<Vec<Sample>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        let value = |v: &serde_json::Value| -> io::Result<f64> {
            v[1].as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other(format!("{promql}: no value in {v}")))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    Ok(Sample {
                        labels,
                        value: value(&r["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"])?,
            }]),
            _ => Err(io::Error::other(format!("{promql}: unexpected {data}"))),
        }
    }

    /// The one value of `promql`, or None while it has no sample.
    pub fn value(&self, promql: &str) -> io::Result<Option<f64>> {
        let samples = self.query(promql)?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            _ => Err(io::Error::other(format!(
                "{promql}: {} samples, one expected: {samples:?}",
                samples.len()
            ))),
        }
    }

    /// Waits (at most `limit`) until `promql` has one value that `ok` accepts; an error with
    /// the last value seen else. `what` says what is awaited, for that error.
    pub fn wait_for(
        &self,
        promql: &str,
        what: &str,
        limit: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64, String> {
        let end = Instant::now() + limit;
        let mut last: Option<f64>;
        loop {
            match self.value(promql) {
                Ok(Some(v)) if ok(v) => return Ok(v),
                Ok(v) => last = v,
                Err(e) => return Err(e.to_string()),
            }
            if Instant::now() >= end {
                return Err(format!("{promql} is {last:?} after {limit:?}, not {what}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
