//! `idlecut check` against real servers: Dovecot (IMAP, 143) and Postfix (Submission, 587) in
//! the server namespace, the check run from the client namespace, the router playing the
//! middlebox of each scenario: none, a firewall that drops or rejects SYNs, a NAT that
//! redirects Submission to another server, a relay that strips STARTTLS; and a Postfix that
//! ends silent sessions itself. Times are scaled down: --max-idle is seconds. Middleboxes that
//! forget idle flows, and the same check run by the agent on its schedule, are
//! `check_idle_cutoff.rs`'s part.
//!
//! Every test here makes traffic on mail ports that any agent on the host counts: run them
//! under the BPF lock.

mod check_site;

use check_site::{Site, detail, port_report, status};
use idlecut_integration_tests::{
    mail::{self, Certificate, StripStarttls, TempDir},
    require_root,
};
use serde_json::Value;

#[test]
fn a_compliant_path_passes_every_check() {
    require_root();
    let site = Site::new();
    let run = site.check(&[
        "--max-idle",
        "4s",
        "--precision",
        "1s",
        "--capability",
        "imap:IDLE",
        "--capability",
        "smtp:PIPELINING",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["result"], "pass", "{report:#}");
    for port in [143, 587] {
        for check in [
            "reachability",
            "identity",
            "extensions",
            "idle_cutoff",
            "keepalive",
        ] {
            assert_eq!(status(&report, port, check), "pass", "{check} on {port}");
        }
        let port = port_report(&report, port);
        assert_eq!(port["certificate"]["sha256"], site.cert.sha256.as_str());
        assert!(port["idle"]["cutoff_upper_seconds"].is_null(), "{port:#}");
        assert!(
            port["idle"]["cutoff_lower_seconds"].as_f64() >= Some(3.9),
            "{port:#}"
        );
        assert!(
            port["capabilities"]
                .as_array()
                .expect("capabilities")
                .contains(&Value::from("STARTTLS"))
        );
    }
    assert_eq!(port_report(&report, 143)["protocol"], "imap");
    assert_eq!(port_report(&report, 587)["protocol"], "smtp");
    // A wrong password: the idle sessions cannot log in, and the row says so.
    let credentials = site.credentials("wrong");
    let target = format!("{}:143", site.net.server_v4());
    let run = site.check_target(
        &target,
        &["--credentials", &credentials, "--max-idle", "2s", "--json"],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(status(&report, 143, "idle_cutoff"), "could_not_tell");
    let why = detail(&report, 143, "idle_cutoff");
    assert!(why.contains("LOGIN as checker failed"), "{why}");
    // The same over IPv6 (the SMTP session greets with an IPv6 address literal).
    let target = format!("[{}]", site.net.server_v6());
    let run = site.check_target(&target, &["--max-idle", "0s", "--json"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143, 587] {
        for check in ["reachability", "identity", "extensions"] {
            assert_eq!(status(&report, port, check), "pass", "{check} on [{port}]");
        }
    }
    drop(site.certs);
}

#[test]
fn refused_dropped_and_unreachable_ports_are_told_apart() {
    require_root();
    let site = Site::new();
    site.net.router_rules(
        "tcp dport 587 ct state new drop\n  \
         tcp dport 143 reject with icmpx type admin-prohibited\n  \
         tcp dport 110 reject with icmpx type port-unreachable",
    );
    // Nothing listens on 25: the server's own RST refuses it.
    let run = site.check(&[
        "--port",
        "25",
        "--port",
        "110",
        "--max-idle",
        "0s",
        "--json",
    ]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for (port, words) in [
        (
            143,
            "an ICMP error answered the SYN: ICMP type 3 code 13 (communication administratively prohibited)",
        ),
        (587, "no answer to the SYN within 2 s"),
        (25, "refused: a RST answered the SYN"),
        (
            110,
            "an ICMP error answered the SYN: ICMP type 3 code 3 (port unreachable)",
        ),
    ] {
        assert_eq!(status(&report, port, "reachability"), "fail");
        let detail = detail(&report, port, "reachability");
        assert!(detail.contains(words), "{port}: {detail}");
    }
}

#[test]
fn a_router_that_redirects_submission_to_another_server_is_interception() {
    require_root();
    let site = Site::new();
    // The other server: another address on the server's link, another Postfix and certificate
    // (for the same name: only the fingerprint tells them apart).
    let k = site.net.k;
    let other = format!("10.{k}.2.3");
    site.net.server.exec(
        "ip",
        &["addr", "add", &format!("{other}/24"), "dev", "eth0"],
    );
    let other_certs = TempDir::new("certs");
    let other_cert = Certificate::generate(&other_certs, "mail.test");
    let _other = mail::postfix(
        &site.net.server,
        &[&other],
        "smtp.hotel.test",
        &other_cert,
        "",
    );
    // A first run, before the redirect, records the real server's certificates.
    let known = site.certs.join("known-certs.json");
    let known = known.to_str().expect("UTF-8 path");
    let server = site.net.server_v4();
    let tofu = [
        server.as_str(),
        "--known-certs",
        known,
        "--max-idle",
        "0s",
        "--json",
    ];
    let run = mail::run_check(&site.net.client, &tofu);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143, 587] {
        let why = detail(&report, port, "identity");
        assert!(why.contains("recorded in"), "{why}");
    }
    let recorded = std::fs::read_to_string(known).expect("the record");
    assert!(recorded.contains(&site.cert.sha256), "{recorded}");
    site.net.router.nft(&format!(
        "table ip nat {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {} tcp dport 587 dnat to {other}\n }}\n}}\n",
        site.net.server_v4()
    ));
    let run = site.check(&["--max-idle", "0s", "--json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(status(&report, 143, "identity"), "pass");
    assert_eq!(status(&report, 587, "identity"), "fail");
    let why = detail(&report, 587, "identity");
    assert!(why.contains("interception"), "{why}");
    assert!(why.contains(&other_cert.sha256), "{why}");
    // The record of the first run catches it too, without --expect-cert.
    let run = mail::run_check(&site.net.client, &tofu);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(status(&report, 143, "identity"), "pass");
    let why = detail(&report, 587, "identity");
    assert!(
        why.contains("not the one recorded on an earlier run") && why.contains("interception"),
        "{why}"
    );
    // Without a pinned certificate, the greeting can give it away too.
    let run = mail::run_check(
        &site.net.client,
        &[
            &format!("{}:587", site.net.server_v4()),
            "--expect-greeting",
            "mail.test",
            "--max-idle",
            "0s",
            "--json",
        ],
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["ports"].as_array().map(Vec::len), Some(1));
    let why = detail(&report, 587, "identity");
    assert!(
        why.contains("the greeting lacks \"mail.test\"") && why.contains("interception"),
        "{why}"
    );
}

#[test]
fn a_relay_that_strips_starttls_is_caught() {
    require_root();
    let site = Site::new();
    let server = site.net.server_v4();
    let _imap_relay =
        StripStarttls::start(&site.net.router, "0.0.0.0:10143", &format!("{server}:143"));
    let _submission_relay =
        StripStarttls::start(&site.net.router, "0.0.0.0:10587", &format!("{server}:587"));
    site.net.router.nft(&format!(
        "table ip nat {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {server} tcp dport 143 redirect to :10143\n  ip daddr {server} tcp dport 587 redirect to :10587\n }}\n}}\n"
    ));
    let run = site.check(&["--max-idle", "0s", "--json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143, 587] {
        assert_eq!(status(&report, port, "reachability"), "pass");
        // The relay passes TLS through: the certificate is still the server's.
        assert_eq!(status(&report, port, "identity"), "pass");
        assert_eq!(status(&report, port, "extensions"), "fail");
        let detail = detail(&report, port, "extensions");
        assert!(
            detail.contains("STARTTLS is missing") && detail.contains("strips it"),
            "{port}: {detail}"
        );
    }
}

#[test]
fn a_server_that_ends_silent_sessions_itself_is_not_blamed_on_the_path() {
    require_root();
    // Postfix hangs up on a client silent for 3 s (421 ... timeout exceeded): that silence is
    // the longest this server lets anyone test, and the path is not at fault.
    let site = Site::with_postfix("smtpd_timeout = 3s");
    let target = format!("{}:587", site.net.server_v4());
    let run = site.check_target(
        &target,
        &["--max-idle", "8s", "--precision", "1s", "--json"],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["result"], "could_not_tell");
    assert_eq!(status(&report, 587, "idle_cutoff"), "could_not_tell");
    let why = detail(&report, 587, "idle_cutoff");
    assert!(
        why.contains("the server itself ends sessions silent for about"),
        "{why}"
    );
    let idle = &port_report(&report, 587)["idle"];
    let limit = idle["server_idle_limit_seconds"].as_f64().expect("limit");
    assert!((2.5..4.0).contains(&limit), "{idle:#}");
    assert!(idle["cutoff_upper_seconds"].is_null(), "{idle:#}");
    assert_eq!(status(&report, 587, "keepalive"), "could_not_tell");
}
