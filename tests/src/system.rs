//! The test process's environment: root, commands, child processes, free ports.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

/// Kernel tests need root. Under CI they fail without it; elsewhere they say loudly that they
/// did not run. Returns false when the test should stop.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") {
        panic!(
            "kernel integration tests need root (CI=true forbids skipping): run them with ./x test"
        );
    }
    eprintln!("SKIPPED: kernel integration tests need root; `./x test` runs them with sudo");
    false
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
