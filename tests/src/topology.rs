//! Network namespaces that clean up after themselves, and the client / router / server
//! topology joined by veth pairs, the router playing the middlebox.

use std::{
    fs::File,
    io::{self, Write as _},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use nix::sched::{CloneFlags, setns};

use crate::system::sh;

/// Moves the calling thread into network namespace `name` (`/run/netns/NAME`): sockets it
/// creates from then on live there. The error names the file and the step that failed.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path)
        .map_err(|err| io::Error::new(err.kind(), format!("opening {path}: {err}")))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
        let err = io::Error::from(errno);
        io::Error::new(err.kind(), format!("setns {path}: {err}"))
    })
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        // A namespace left behind by a crashed run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// Loads an nftables ruleset (`nft -f -`) in the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("writing the ruleset");
        let output = child.wait_with_output().expect("waiting for nft");
        assert!(
            output.status.success(),
            "nft -f failed for\n{ruleset}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates live there (and
    /// may then be used from any thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        thread::spawn(move || {
            enter_netns(&name).unwrap_or_else(|err| panic!("{err}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// client --veth-- router --veth-- server, over IPv4 and IPv6. The router forwards, and plays
/// the middlebox with nftables rules the test adds.
///
/// Addresses, with `k` unique to the topology so that paths never collide between tests:
/// client 10.k.1.2 / fd00:k:1::2, router 10.k.1.1 10.k.2.1 / fd00:k:1::1 fd00:k:2::1,
/// server 10.k.2.2 / fd00:k:2::2.
pub struct Topology {
    pub k: u32,
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let k = 100 + (std::process::id() + NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed)) % 150;
        let tag = format!("ic{}-{k}", std::process::id());
        let client = Netns::new(format!("{tag}-client"));
        let router = Netns::new(format!("{tag}-router"));
        let server = Netns::new(format!("{tag}-server"));
        for (ns, side) in [(&client, 1), (&server, 2)] {
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("eth{side}"),
                    "netns",
                    &router.name,
                ],
            );
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            ns.exec(
                "ip",
                &["addr", "add", &format!("10.{k}.{side}.2/24"), "dev", "eth0"],
            );
            ns.exec(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:{k}:{side}::2/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            ns.exec("ip", &["link", "set", "eth0", "up"]);
            ns.exec(
                "ip",
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{k}.{side}.1"),
                ],
            );
            ns.exec(
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd00:{k}:{side}::1"),
                ],
            );
            let dev = format!("eth{side}");
            router.exec(
                "ip",
                &["addr", "add", &format!("10.{k}.{side}.1/24"), "dev", &dev],
            );
            router.exec(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:{k}:{side}::1/64"),
                    "dev",
                    &dev,
                    "nodad",
                ],
            );
            router.exec("ip", &["link", "set", &dev, "up"]);
        }
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv6.conf.all.forwarding", "1");
        // The middlebox answers every packet it rejects: with Linux's ICMP rate limit (one per
        // second per destination after a burst of six), keepalives and retransmissions of one
        // connection could use up another's error, and which connection hears "unreachable"
        // would depend on timing.
        router.sysctl("net.ipv4.icmp_ratelimit", "0");
        router.sysctl("net.ipv6.icmp.ratelimit", "0");
        Self {
            k,
            client,
            router,
            server,
        }
    }

    pub fn client_v4(&self) -> String {
        format!("10.{}.1.2", self.k)
    }
    pub fn server_v4(&self) -> String {
        format!("10.{}.2.2", self.k)
    }
    pub fn client_v6(&self) -> String {
        format!("fd00:{}:1::2", self.k)
    }
    pub fn server_v6(&self) -> String {
        format!("fd00:{}:2::2", self.k)
    }
    /// The path label the server gives its clients: the client subnet.
    pub fn client_path_v4(&self) -> String {
        format!("10.{}.1.0/24", self.k)
    }
    /// The path label the client gives its server.
    pub fn server_path_v4(&self) -> String {
        format!("10.{}.2.0/24", self.k)
    }
    pub fn client_path_v6(&self) -> String {
        format!("fd00:{}:1::/48", self.k)
    }
    pub fn server_path_v6(&self) -> String {
        format!("fd00:{}:2::/48", self.k)
    }
    /// Every path label this topology's connections can have.
    pub fn paths(&self) -> Vec<String> {
        vec![
            self.client_path_v4(),
            self.server_path_v4(),
            self.client_path_v6(),
            self.server_path_v6(),
        ]
    }

    /// Installs an nftables ruleset in the router (replacing table `inet middlebox`).
    pub fn router_rules(&self, forward_chain_rules: &str) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router.name,
                "nft",
                "delete",
                "table",
                "inet",
                "middlebox",
            ])
            .output();
        self.router.nft(&format!(
            "table inet middlebox {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  {forward_chain_rules}\n }}\n}}\n"
        ));
    }

    pub fn clear_router_rules(&self) {
        self.router
            .exec("nft", &["delete", "table", "inet", "middlebox"]);
    }

    /// Makes the router a stateful middlebox: conntrack forgets an idle established flow after
    /// `idle_timeout_s`, and with `loose` off a mid-stream segment cannot re-create it.
    pub fn router_conntrack(&self, idle_timeout_s: u32, loose: bool) {
        self.router.sysctl(
            "net.netfilter.nf_conntrack_tcp_timeout_established",
            &idle_timeout_s.to_string(),
        );
        self.router.sysctl(
            "net.netfilter.nf_conntrack_tcp_loose",
            if loose { "1" } else { "0" },
        );
    }

    /// Appends one rule to the router's forward chain (created by `router_rules`).
    pub fn router_add_rule(&self, rule: &str) {
        let mut args = vec!["add", "rule", "inet", "middlebox", "forward"];
        args.extend(rule.split_whitespace());
        self.router.exec("nft", &args);
    }

    /// Source NAT with randomized ports for traffic towards the server, like a carrier NAT.
    pub fn router_masquerade_random(&self) {
        self.router.nft(
            "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"eth2\" masquerade random\n }\n}\n",
        );
    }
}

/// This host's own namespace (where the agent runs) joined to the router as a second client,
/// for the connections the agent itself makes (its scheduled checks): 10.k.3.2 on the host,
/// 10.k.3.1 on the router, and a route to the server's subnet through the router. The link
/// (and its route) is deleted on drop.
pub struct HostLink {
    name: String,
}

impl Topology {
    pub fn attach_host(&self) -> HostLink {
        let k = self.k;
        let name = format!("ich{k}-{}", std::process::id() % 100_000);
        // A link left behind by a crashed run would make `add` fail.
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        sh(
            "ip",
            &[
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                "eth3",
                "netns",
                &self.router.name,
            ],
        );
        let link = HostLink { name };
        sh(
            "ip",
            &["addr", "add", &format!("10.{k}.3.2/24"), "dev", &link.name],
        );
        sh("ip", &["link", "set", &link.name, "up"]);
        self.router.exec(
            "ip",
            &["addr", "add", &format!("10.{k}.3.1/24"), "dev", "eth3"],
        );
        self.router.exec("ip", &["link", "set", "eth3", "up"]);
        sh(
            "ip",
            &[
                "route",
                "add",
                &format!("10.{k}.2.0/24"),
                "via",
                &format!("10.{k}.3.1"),
            ],
        );
        link
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
