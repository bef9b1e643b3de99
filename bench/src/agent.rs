//! The real agent as a process under measurement: started with given flags, observed from
//! outside (/proc for memory and CPU, fdinfo for its BPF maps and programs, HTTP for its
//! metrics), stopped on drop.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use idlecut_integration_tests::{Scrape, http_get};
use serde::Serialize;

/// The agent binary: `IDLECUT_BIN` (set by `./x bench`), else the workspace's release build.
pub fn binary() -> PathBuf {
    std::env::var_os("IDLECUT_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/idlecut"),
        PathBuf::from,
    )
}

/// What the agent logs once its start-up scan has been taken in.
pub const SCAN_DONE: &str = "found connections that were already open";

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    /// When the process was spawned.
    pub spawned: Instant,
    log: PathBuf,
}

/// One of the agent's BPF maps, from its fdinfo and the kernel's map info.
#[derive(Clone, Debug, Serialize)]
pub struct MapUsage {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// The kernel's accounting of the map's memory (`memlock` in fdinfo: the map's
    /// `map_mem_usage` on Linux 6.4 and later).
    pub memlock_bytes: u64,
}

impl Agent {
    /// Starts the agent with `args` (plus `--listen` on a free port) and waits until it serves
    /// /healthz, which it does only once its programs are attached.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let binary = binary();
        if !binary.exists() {
            bail!(
                "{} does not exist: build it with `./x build` (or run `./x bench`)",
                binary.display()
            );
        }
        let addr = free_local_port()?;
        let log = std::env::temp_dir().join(format!("idlecut-bench-agent-{}.log", addr.port()));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let spawned = Instant::now();
        let child = Command::new(&binary)
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env(
                "IDLECUT_LOG",
                log_filter().unwrap_or_else(|| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut agent = Self {
            child,
            addr,
            spawned,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "the agent exited with {status} at start-up:\n{}",
                    agent.log_text()
                );
            }
            if http_get(addr, "/healthz").is_ok_and(|(status, _)| status == 200) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not come up within 60 s:\n{}",
                    agent.log_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the start-up scan has been taken in (so that it does not run into a
    /// measurement), for at most `timeout`.
    pub fn settle(&self, timeout: Duration) {
        let _ = self.wait_for_log(SCAN_DONE, timeout);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle`; returns it and how long after the spawn it
    /// was first seen (polled every 5 ms).
    pub fn wait_for_log(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|line| line.contains(needle)) {
                return Ok((strip_ansi(line), self.spawned.elapsed()));
            }
            if Instant::now() > deadline {
                bail!("the agent did not log `{needle}` within {timeout:?}:\n{text}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, body) = http_get(self.addr, "/metrics").context("scraping /metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(Scrape::parse(&body))
    }

    /// Resident memory (VmRSS), bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        kib_field(&status, "VmRSS:").with_context(|| format!("no VmRSS in {path}"))
    }

    /// CPU time used so far, user and system, all threads, seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the command name (which may contain spaces, inside parentheses).
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .with_context(|| format!("malformed {path}"))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("malformed {path}"))
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as f64 } else { 100.0 };
        Ok((ticks(11)? + ticks(12)?) as f64 / hz)
    }

    /// Ids of the BPF programs the agent holds (its attached programs).
    pub fn program_ids(&self) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .bpf_fdinfo("anon_inode:bpf-prog")?
            .iter()
            .filter_map(|info| field(info, "prog_id"))
            .filter_map(|id| u32::try_from(id).ok())
            .collect())
    }

    /// Times the kernel skipped the agent's programs because another BPF program was already
    /// running on that CPU (`recursion_misses`, summed over its programs): events lost before
    /// any program saw them.
    pub fn recursion_misses(&self) -> anyhow::Result<u64> {
        Ok(self
            .bpf_fdinfo("anon_inode:bpf-prog")?
            .iter()
            .filter_map(|info| field(info, "recursion_misses"))
            .sum())
    }

    /// The BPF maps the agent holds, with the kernel's accounting of their memory.
    pub fn maps(&self) -> anyhow::Result<Vec<MapUsage>> {
        let mut maps = Vec::new();
        for info in self.bpf_fdinfo("anon_inode:bpf-map")? {
            let get = |key| field(&info, key).unwrap_or(0);
            let id = u32::try_from(get("map_id")).unwrap_or(0);
            let name = aya::maps::MapInfo::from_id(id)
                .ok()
                .and_then(|map| map.name_as_str().map(str::to_owned))
                .unwrap_or_default();
            maps.push(MapUsage {
                id,
                name,
                map_type: u32::try_from(get("map_type")).unwrap_or(0),
                key_size: u32::try_from(get("key_size")).unwrap_or(0),
                value_size: u32::try_from(get("value_size")).unwrap_or(0),
                max_entries: u32::try_from(get("max_entries")).unwrap_or(0),
                memlock_bytes: get("memlock"),
            });
        }
        maps.sort_by_key(|map| map.id);
        maps.dedup_by_key(|map| map.id);
        Ok(maps)
    }

    /// The fdinfo text of every descriptor of the agent that links to `target`.
    fn bpf_fdinfo(&self, target: &str) -> anyhow::Result<Vec<String>> {
        let dir = format!("/proc/{}/fd", self.pid());
        let mut infos = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let entry = entry?;
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if link.as_os_str() != target {
                continue;
            }
            let fdinfo = format!(
                "/proc/{}/fdinfo/{}",
                self.pid(),
                entry.file_name().display()
            );
            if let Ok(text) = std::fs::read_to_string(&fdinfo) {
                infos.push(text);
            }
        }
        Ok(infos)
    }
}

/// `IDLECUT_BENCH_AGENT_LOG`: the agent's log filter (`IDLECUT_LOG`) for diagnosis, e.g.
/// `debug,idlecut::pipeline=trace` for every event; its logs are then kept.
fn log_filter() -> Option<String> {
    std::env::var("IDLECUT_BENCH_AGENT_LOG").ok()
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first so that the agent detaches cleanly; SIGKILL if it hangs.
        let stopped = idlecut_integration_tests::stop(&mut self.child, Duration::from_secs(10));
        if log_filter().is_some() {
            eprintln!("idlecut-bench: agent log kept in {}", self.log.display());
        } else if stopped {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A `key   N kB` line of a /proc file (status, meminfo), in bytes.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

/// A `key:\tvalue` field of an fdinfo file.
fn field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn free_local_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?)
}

/// The text of a log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields_parse() {
        let info = "pos:\t0\nmap_type:\t9\nmax_entries:\t65536\nmemlock:\t7340928\nmap_id:\t585\n";
        assert_eq!(field(info, "memlock"), Some(7_340_928));
        assert_eq!(field(info, "map_id"), Some(585));
        assert_eq!(field(info, "prog_id"), None);
    }

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m found connections=3"),
            "time  INFO found connections=3"
        );
    }
}
