//! The command line: bad values get a one-line error that names the flag or key, and exit 2.
//! These run the real binary but load nothing into the kernel.

use std::process::Command;

use idlecut_integration_tests::agent_binary;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(agent_binary())
        .args(args)
        .output()
        .expect("running idlecut");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_flag_values_name_the_flag_and_exit_2() {
    for (args, flag) in [
        (&["--ports", "143=imap,99999=x"][..], "--ports"),
        (&["--ipv4-prefix", "33"][..], "--ipv4-prefix"),
        (&["--ipv6-prefix", "-1"][..], "--ipv6-prefix"),
        (&["--max-paths", "0"][..], "--max-paths"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--min-idle-gap", "10"][..], "--min-idle-gap"),
        (&["--log-format", "xml"][..], "--log-format"),
        (&["--ring-buffer-size", "5000"][..], "--ring-buffer-size"),
        // Bounded: 4.2 GB of ring buffer or 2.1 GB of connection state is a typo.
        (
            &["--ring-buffer-size", "2147483648"][..],
            "--ring-buffer-size",
        ),
        (&["--max-connections", "16777216"][..], "--max-connections"),
        // A negative duration is a bad duration, not an unknown flag `-5`.
        (&["--min-idle-gap", "-5s"][..], "--min-idle-gap"),
        (&["--hooks", "fast"][..], "--hooks"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:"), "{args:?}: {stderr}");
        assert!(
            first.contains(flag),
            "{args:?} does not name {flag}: {stderr}"
        );
    }
}

#[test]
fn bad_config_file_names_the_key_and_exits_2() {
    let path = std::env::temp_dir().join(format!("idlecut-cli-{}.toml", std::process::id()));
    std::fs::write(&path, "max_paths = 10\nipv6_prefix = 200\n").expect("writing the file");
    let (code, stderr) = run(&["--config", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("key `ipv6_prefix`"), "{stderr}");

    // A value of the wrong type names its key and its line (the item starts at column 0).
    std::fs::write(&path, "\nmax_paths = \"many\"\n").expect("writing the file");
    let (code, stderr) = run(&["--config", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("(line 2): key `max_paths`: `many` is not a number"),
        "{stderr}"
    );

    // A bad [[check]] table: the line, the table and the key, before anything loads.
    std::fs::write(
        &path,
        "[[check]]\ntarget = \"mail.example.net\"\n\n[[check]]\ntarget = \"[::1]:143\"\n\
         every = \"10s\"\n",
    )
    .expect("writing the file");
    let (code, stderr) = run(&["--config", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("(line 6): [[check]] #2: key `every`: 10 s is too often (at least 1m)"),
        "{stderr}"
    );

    let (code, stderr) = run(&["--config", "/nonexistent/idlecut.toml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/idlecut.toml"), "{stderr}");
}

#[test]
fn help_documents_every_setting() {
    let output = Command::new(agent_binary())
        .arg("--help")
        .output()
        .expect("running idlecut --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--config",
        "--listen",
        "--ports",
        "--ipv4-prefix",
        "--ipv6-prefix",
        "--max-paths",
        "--log-format",
        "--min-idle-gap",
        "--max-connections",
        "--ring-buffer-size",
        "--hooks",
        "--req5-threshold",
        "--min-cuts",
        "--scan-interval",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

/// Without privileges the agent cannot load anything: it says which privileges (not "the
/// verifier rejected the program"), and a log filter that does not parse is reported instead
/// of silencing every line.
#[test]
fn without_privileges_the_error_says_which_and_a_bad_log_filter_is_reported() {
    if !idlecut_integration_tests::require_root() {
        return;
    }
    let binary = idlecut_integration_tests::agent_copy_for_nobody();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(&binary)
        .args(["--listen", "127.0.0.1:0"])
        .env("IDLECUT_LOG", "garbage!!!")
        .output()
        .expect("running idlecut as nobody");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("IDLECUT_LOG is not a valid log filter"),
        "the bad filter should be reported:\n{stderr}"
    );
    assert!(
        stderr.contains("not permitted") && stderr.contains("CAP_BPF"),
        "the error should name the privileges:\n{stderr}"
    );
    assert!(!stderr.contains("verifier"), "{stderr}");
}
