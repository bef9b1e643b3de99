//! A real Prometheus server for the live check (`prometheus_live.rs`): the Debian package's
//! binary on a loopback port, scraping one agent every second over TLS with a bearer token
//! (README's scrape config), evaluating the repository's rules made to fire within a test; and
//! the reads of its HTTP API.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use idlecut_integration_tests::{free_local_port, http_get, rules_dir, stop, web::TestPki};
use serde_json::Value;

/// The rules' 30 and 10 minute windows shrink to this in the live check, and every `for:` to
/// 2 s, so that alerts fire within the test.
const LIVE_WINDOW: &str = "10s";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "idlecut-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The rules file with alerts made to fire within a test: every `for:` becomes 2 s and the
/// 30 and 10 minute windows become LIVE_WINDOW.
fn rules_for_live_check() -> String {
    let rules = fs::read_to_string(rules_dir().join("idlecut-rules.yml")).expect("rules file");
    let mut fors = 0;
    let mut out: Vec<String> = rules
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("for: ") {
                fors += 1;
                format!("{}for: 2s", &line[..line.len() - trimmed.len()])
            } else {
                line.to_owned()
            }
        })
        .collect();
    out.push(String::new());
    let mut text = out.join("\n");
    for window in ["30m", "10m"] {
        for (from, to) in [
            (format!("[{window}]"), format!("[{LIVE_WINDOW}]")),
            (format!("offset {window}"), format!("offset {LIVE_WINDOW}")),
        ] {
            assert!(
                text.contains(&from),
                "the rules no longer use {from}: update rules_for_live_check"
            );
            text = text.replace(&from, &to);
        }
    }
    assert!(fors >= 3, "only {fors} `for:` clauses rewritten");
    text
}

/// A real Prometheus server scraping one agent, stopped (and its data removed) on drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Scrapes `agent` over TLS (trusting `pki`'s CA) with the bearer token in `pki`'s `token`
    /// file, as README's scrape config says.
    pub fn start(agent: SocketAddr, pki: &TestPki) -> Self {
        let dir = TempDir::new("prometheus");
        fs::write(dir.0.join("rules.yml"), rules_for_live_check()).expect("writing rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: idlecut\n    scheme: https\n\
             \x20   tls_config:\n      ca_file: {ca}\n      server_name: idlecut.test\n\
             \x20   authorization:\n      credentials_file: {token}\n\
             \x20   static_configs:\n      - targets: ['{agent}']\n",
            ca = pki.path("ca.pem").display(),
            token = pki.path("token").display(),
        );
        eprintln!("prometheus.yml:\n{config}");
        fs::write(dir.0.join("prometheus.yml"), config).expect("writing the config");
        let addr = free_local_port();
        let log = fs::File::create(dir.0.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .current_dir(&dir.0)
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // Exemplars of idlecut_idle_before_cut_seconds name the cut connections.
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("starting prometheus: {err}; install Debian's `prometheus` package")
            });
        let mut prometheus = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prometheus.child.try_wait().expect("prometheus status") {
                panic!(
                    "prometheus exited with {status} at start-up:\n{}",
                    prometheus.log_text()
                );
            }
            if http_get(addr, "/-/ready").is_ok_and(|(status, _)| status == 200) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 30 s:\n{}",
                prometheus.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; returns `data` of a successful answer.
    pub fn api(&self, path: &str) -> Value {
        let (status, body) =
            http_get(self.addr, path).unwrap_or_else(|err| panic!("GET {path}: {err}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("GET {path}: {status}, bad JSON ({err}): {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "GET {path}: {status} {answer}"
        );
        answer["data"].clone()
    }

    pub fn query(&self, expr: &str, at: f64) -> Vec<Value> {
        let data = self.api(&format!(
            "/api/v1/query?query={}&time={at:.3}",
            url_encode(expr)
        ));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn query_range(&self, expr: &str, start: f64, end: f64) -> Vec<Value> {
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1",
            url_encode(expr)
        ));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
        // `dir` is removed when the struct's fields drop, after the process is gone.
    }
}

pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}
