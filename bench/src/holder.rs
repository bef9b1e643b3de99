//! Processes that hold connections open, both ends, for the scale measurement: one process
//! may not have more descriptors than its hard RLIMIT_NOFILE (which raising needs
//! CAP_SYS_RESOURCE), so tens of thousands of connections are spread over several processes,
//! like the processes of a mail server. Each is this binary run as `idlecut-bench hold`.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    net::{self, connect_from, source_in_own_prefix},
    workload::accept_patiently,
};

/// What one holder process does.
#[derive(Clone, Debug, clap::Args)]
pub struct HoldArgs {
    /// Network namespace to enter
    #[arg(long)]
    pub netns: String,
    /// The holder's number: it listens on 127.0.0.(1 + index):143 (all in 127.0.0.0/24: one
    /// path for the client role)
    #[arg(long)]
    pub index: u8,
    /// Global number of its first connection (connection `j` comes from prefix `j % prefixes`)
    #[arg(long)]
    pub first: u32,
    /// Connections to hold
    #[arg(long)]
    pub count: u32,
    /// Client prefixes
    #[arg(long)]
    pub prefixes: u32,
    /// Connections with a global number below this are closed (FIN) once all are open
    #[arg(long)]
    pub close_below: u32,
}

/// Runs in the holder process: opens the connections, closes the first ones, says `ready N`
/// on stdout, and holds the rest until stdin closes.
pub fn hold(args: &HoldArgs) -> anyhow::Result<()> {
    idlecut_integration_tests::enter_netns(&args.netns)?;
    let server = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1 + args.index), 143);
    let listener = net::listener(server, 4096)?;
    let mut pairs: Vec<(u32, TcpStream, TcpStream)> = Vec::with_capacity(args.count as usize);
    for j in args.first..args.first + args.count {
        let from = source_in_own_prefix(j % args.prefixes);
        let client =
            connect_from(from, server).with_context(|| format!("connecting {from} to {server}"))?;
        let (accepted, _) = accept_patiently(&listener, Duration::from_secs(10))?;
        pairs.push((j, client, accepted));
    }
    let (closing, held): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|(j, _, _)| *j < args.close_below);
    for (_, client, accepted) in closing {
        drop(client);
        net::drain_to_eof(accepted, Duration::from_secs(2));
    }
    println!("ready {}", held.len());
    // Hold until the parent closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    Ok(())
}

/// A holder process, stopped on drop.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    pub fn spawn(args: &HoldArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating idlecut-bench")?;
        let child = Command::new(exe)
            .arg("hold")
            .args(["--netns", &args.netns])
            .args(["--index", &args.index.to_string()])
            .args(["--first", &args.first.to_string()])
            .args(["--count", &args.count.to_string()])
            .args(["--prefixes", &args.prefixes.to_string()])
            .args(["--close-below", &args.close_below.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a holder process")?;
        let mut holder = Self { child, stdin: None };
        holder.stdin = holder.child.stdin.take();
        Ok(holder)
    }

    /// Waits for `ready N` (the holder bounds its own waits); returns N, the connections it
    /// holds.
    pub fn ready(&mut self) -> anyhow::Result<u32> {
        let stdout = self.child.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        line.trim()
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the holder failed (said `{}`)", line.trim()))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // EOF on its stdin: it exits, and the kernel closes its connections.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits `total` connections over holders of at most `per_holder` each.
pub fn plan(
    total: u32,
    per_holder: u32,
    prefixes: u32,
    close_below: u32,
    netns: &str,
) -> Vec<HoldArgs> {
    let mut plans = Vec::new();
    let mut first = 0;
    let mut index = 0u8;
    while first < total {
        let count = per_holder.min(total - first);
        plans.push(HoldArgs {
            netns: netns.to_owned(),
            index,
            first,
            count,
            prefixes,
            close_below,
        });
        first += count;
        index = index.saturating_add(1);
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_split_without_gaps() {
        let plans = plan(20_500, 9000, 499, 499, "ns");
        let counts: Vec<u32> = plans.iter().map(|p| p.count).collect();
        assert_eq!(counts, [9000, 9000, 2500]);
        assert_eq!(plans[1].first, 9000);
        assert_eq!(plans[2].index, 2);
    }
}
