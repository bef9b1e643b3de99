//! The command line: bad values get a one-line error that names the flag or key, and exit 2.
//! These run the real binary but load nothing into the kernel.

use std::process::Command;

use idlecut_integration_tests::{
    agent_binary,
    mail::{LoopbackImap, TempDir},
};

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

/// Issue 21: `idlecut check` values that used to pass the command line and fail later (or
/// never pass): a timeout TCP_USER_TIMEOUT cannot take, an empty capability, a URL as target.
/// Each is a usage error naming the option, before any connection.
#[test]
fn check_values_out_of_range_name_the_option_and_exit_2() {
    for (args, names, words) in [
        (
            &["check", "127.0.0.1:1", "--answer-timeout", "25d"][..],
            "--answer-timeout",
            "at most 24d",
        ),
        (
            &["check", "127.0.0.1:1", "--capability", ""][..],
            "--capability",
            "an empty capability: write one such as IDLE",
        ),
        (
            &["check", "imap://mail.example.net:143"][..],
            "TARGET",
            "write `mail.example.net:143`",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") && first.contains(names) && first.contains(words),
            "{args:?}: {stderr}"
        );
    }
}

/// The same values in a `[[check]]` table stop the agent at start-up (`Config::load`, the
/// first thing `main` does, before the web config, the listener or any program loads), naming
/// the file, the table and the key. A credentials value is never repeated: whoever writes
/// `user:password` there must not find the password in the log.
#[test]
fn bad_check_tables_stop_the_agent_before_anything_loads() {
    let dir = TempDir::new("cli-check-tables");
    let path = dir.join("idlecut.toml");
    // Should a table pass by mistake, the missing web config (read next) still stops the agent
    // with another message, before it binds or loads anything: the test fails, never hangs.
    let run = |config: &std::path::Path| {
        run(&[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--web-config",
            "/nonexistent/idlecut-web.toml",
        ])
    };
    for (table, expected) in [
        (
            "answer_timeout = \"25d\"",
            "(line 3): [[check]] #1: key `answer_timeout`: `25d` is too long (at most 24d",
        ),
        (
            "capabilities = [\"IDLE\", \"\"]",
            "(line 3): [[check]] #1: key `capabilities`: an empty capability",
        ),
        (
            "credentials = \"bob:hunter2\"",
            "(line 3): [[check]] #1: key `credentials`: cannot read the file it names",
        ),
    ] {
        std::fs::write(
            &path,
            format!("[[check]]\ntarget = \"mail.example.net\"\n{table}\n"),
        )
        .expect("writing the file");
        let (code, stderr) = run(&path);
        assert_eq!(code, Some(2), "{table}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{table}: {stderr}");
        assert!(
            stderr.starts_with(&format!("idlecut: error: config file {}", path.display())),
            "{table}: {stderr}"
        );
        assert!(stderr.contains(expected), "{table}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{table}: {stderr}");
    }
    std::fs::write(
        &path,
        "[[check]]\ntarget = \"imap://bob:hunter2@mail.example.net:143\"\n",
    )
    .expect("writing the file");
    let (code, stderr) = run(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "key `target`: a target is HOST:PORT, not a URL: write `mail.example.net:143`"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Issue 21: a run that could not write `--known-certs` printed only "error: writing ...",
/// throwing away a report that may have taken two hours. The report comes first, then the
/// error, and the exit status says a file could not be used.
#[test]
fn a_known_certs_file_that_cannot_be_written_follows_the_report() {
    let server = LoopbackImap::start();
    let dir = TempDir::new("cli-known-certs");
    let known = dir.join("no-such-dir/known.json");
    let output = Command::new(agent_binary())
        .args(["check", &server.addr.to_string(), "--max-idle", "0s"])
        .args(["--answer-timeout", "5s", "--known-certs"])
        .arg(&known)
        .output()
        .expect("running idlecut check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("idlecut check {}", server.addr.ip()))
            && stdout.contains("identity")
            && stdout.contains("certificate"),
        "the report is printed:\n{stdout}\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("idlecut: error: writing") && last.contains("known.json"),
        "the error comes last:\n{stderr}"
    );
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
    idlecut_integration_tests::require_root();
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
