//! The test process's environment: root, commands, child processes, free ports.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

/// Kernel tests need root: without it they fail, saying how to run them, rather than pass
/// having tested nothing. (This crate is not among the workspace's default members: a plain
/// `cargo test` runs the unit tests, which need no root; `./x test` runs these as root.)
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this kernel integration test needs root (it loads eBPF programs and creates network \
             namespaces): run `./x test`, which runs it through sudo"
        );
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {program} {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops a child process: SIGTERM first, so that it can clean up (the agent detaches its
/// programs), then SIGKILL if it has not exited within `grace`. Returns whether it exited on
/// its own.
pub fn stop(child: &mut Child, grace: Duration) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A loopback address with a port nothing listens on (for the agent, for Prometheus).
pub fn free_local_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr")
}
