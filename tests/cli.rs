//! Hostile values for the CLI's seconds and rates: each is refused with a clear message and a
//! usage or run error (exit 2 or 1), never a panic (exit 101), before anything starts.

use std::process::Command;

fn refused(args: &[&str], expect: &str) {
    let (code, _, stderr) = run(args);
    assert!(
        matches!(code, Some(1 | 2)),
        "{args:?}: exit {code:?}, stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(expect),
        "{args:?}: stderr lacks {expect:?}:\n{stderr}"
    );
}

#[test]
fn absurd_seconds_and_rates_are_refused_before_the_run() {
    // `--option=VALUE`, so that a negative value is read as a value, not as a flag.
    for v in ["1e300", "inf", "1e19", "nan", "-1"] {
        let duration = format!("--duration={v}");
        refused(&["watch", &duration], "out of range");
        refused(&["listen", "/nonexistent/sock", &duration], "out of range");
        refused(&["shadow", &duration], "out of range");
        refused(&["shadow", &format!("--report-every={v}")], "out of range");
    }
    for v in ["1e-300", "0", "inf", "1e300", "-5"] {
        refused(
            &["listen", "/nonexistent/sock", &format!("--rate={v}")],
            "out of range",
        );
        refused(&["stress", &format!("--flow-rate={v}")], "out of range");
    }
    refused(
        &[
            "stress",
            "--socket",
            "/nonexistent/sock",
            "--socket-spec",
            "pace=1e-300",
        ],
        "pace",
    );
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rough edges a new user hit: a component file given to the native backend was ignored in
/// silence; an unnamed listener was reported as "listener listener"; `list --help` described
/// event messages; `shadow`'s exit status 2 was not in its help.
#[test]
fn rough_edges_a_new_user_hit() {
    let capture = "tests/captures/tcp-close-v4.pcap";
    let (code, _, stderr) = run(&[
        "replay",
        capture,
        "--backend",
        "native",
        "--component",
        "/nonexistent.wasm",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("component backend"), "{stderr}");

    let (code, _, stderr) = run(&["replay", capture, "--listener", "reliable"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("listener 1:"), "{stderr}");
    assert!(!stderr.contains("listener listener"), "{stderr}");

    let (_, help, _) = run(&["list", "--help"]);
    assert!(help.contains("conntrack -L"), "{help}");
    assert!(!help.contains("per event message"), "{help}");

    let (_, help, _) = run(&["help"]);
    assert!(help.contains("2 when some diverged"), "{help}");
}

/// The README's first command prints what its comment says: the lines of
/// `tests/captures/tcp-close-v4.events`, but for the ids, the bracketed times and the DESTROY's
/// time, which the README names.
#[test]
fn the_readmes_first_command_prints_the_kernels_lines() {
    let readme = include_str!("../README.md");
    let command: String = readme
        .lines()
        .skip_while(|l| !l.starts_with("cargo run --release -- replay"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim_end_matches('\\').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let args: Vec<&str> = command
        .strip_prefix("cargo run --release -- ")
        .expect("the README's first command")
        .split_whitespace()
        .collect();
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, Some(0), "{stderr}");
    // Without the id and the bracketed time; the DESTROY's counters, delta-time and stamps
    // stay in.
    let strip = |line: &str| -> String {
        let line = line.split_once('\t').map_or(line, |(_, rest)| rest);
        line.split_whitespace()
            .filter(|w| !w.starts_with("id="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ours: Vec<String> = stdout.lines().map(strip).collect();
    let kernel: Vec<String> = include_str!("captures/tcp-close-v4.events")
        .lines()
        .map(strip)
        .collect();
    assert_eq!(ours, kernel);
}

#[test]
fn malformed_filters_are_refused_before_any_socket_opens() {
    // Each names its option and what it expected; none needs root or a kernel.
    for command in ["list", "watch", "delete", "update"] {
        for (args, expect) in [
            (&["-p", "tcpx"][..], "-p `tcpx`"),
            (&["-f", "ipv5"], "-f `ipv5`"),
            (&["-s", "10.0.0.256"], "-s `10.0.0.256`"),
            (&["-d", "fd00::1/129"], "-d `fd00::1/129`"),
            (&["--reply-src", "nope"], "--reply-src `nope`"),
            (&["-p", "tcp", "--sport", "65536"], "--sport `65536`"),
            (&["--state", "ESTABLISHED"], "`-p tcp` with it"),
            (
                &["-p", "tcp", "--state", "ESTABLISH"],
                "--state `ESTABLISH`",
            ),
            (&["-p", "icmp", "--dport", "80"], "a protocol with ports"),
            (&["-u", "ASSURED,BOGUS"], "-u `ASSURED,BOGUS`"),
            (&["-m", "0x/"], "-m `0x/`"),
            (&["-w", "70000"], "-w `70000`"),
            (&["-f", "ipv6", "-s", "10.0.0.1"], "addresses of the family"),
        ] {
            let mut argv = vec![command, "--netns", "ctwasm-no-such-namespace"];
            argv.extend_from_slice(args);
            refused(&argv, expect);
        }
    }
    refused(
        &[
            "watch",
            "--netns",
            "ctwasm-no-such-namespace",
            "-e",
            "NEW,CREATE",
        ],
        "-e `NEW,CREATE`",
    );
    // get names one entry; update needs a change the kernel allows.
    let v4 = ["-s", "10.0.0.1", "-d", "10.0.0.2"];
    for (args, expect) in [
        (
            &["-s", "10.0.0.1", "-p", "udp"][..],
            "--src/--dst: expected both",
        ),
        (
            &["-s", "10.0.0.0/8", "-d", "10.0.0.2", "-p", "udp"],
            "--src/--dst `10.0.0.0/8`",
        ),
        (&v4[..], "-p: expected a protocol"),
        (
            &[&v4[..], &["-p", "tcp", "--sport", "1"]].concat(),
            "--sport/--dport: expected both",
        ),
        (&[&v4[..], &["-p", "icmp"]].concat(), "-p `1`"),
        (
            &["-s", "10.0.0.1", "-d", "::1", "-p", "gre"],
            "addresses of one family",
        ),
    ] {
        let mut argv = vec!["get", "--netns", "ctwasm-no-such-namespace"];
        argv.extend_from_slice(args);
        refused(&argv, expect);
    }
    for (args, expect) in [
        (&["-p", "udp"][..], "nothing to change"),
        (
            &["-u", "DYING"],
            "-u `DYING`: expected ASSURED or SEEN_REPLY",
        ),
        (&["-m", "7/"], "-m `7/`"),
    ] {
        let mut argv = vec!["update", "--netns", "ctwasm-no-such-namespace"];
        argv.extend_from_slice(args);
        refused(&argv, expect);
    }
    refused(
        &[
            "list",
            "--netns",
            "ctwasm-no-such-namespace",
            "-o",
            "xml,html",
        ],
        "unknown output option `html`",
    );
}

/// Every long option `--help` lists for a command appears in the README's CLI section, so the
/// synopsis cannot fall behind the binary again.
#[test]
fn the_readme_names_every_option_the_commands_take() {
    let readme = include_str!("../README.md");
    let cli = readme
        .split("## The CLI")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a CLI section");
    let commands = [
        "replay",
        "stress",
        "watch",
        "list",
        "get",
        "delete",
        "update",
        "count",
        "stats",
        "flush",
        "listen",
        "shadow",
        "component",
        "wit",
    ];
    let mut missing = Vec::new();
    for command in commands {
        let (code, help, _) = run(&[command, "--help"]);
        assert_eq!(code, Some(0), "{command} --help");
        for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            let Some(option) = word.strip_prefix("--") else {
                continue;
            };
            let option: String = option
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if option.is_empty() || option == "help" || option == "version" {
                continue;
            }
            if !cli.contains(&format!("--{option}")) {
                missing.push(format!("{command} --{option}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the README's CLI section lacks: {missing:?}"
    );
}

/// A real capture taken with `tcpdump -i any` on loopback, whose UDP checksums are unfinished
/// (the sender left them to an offload that loopback never performs), rewritten as if taken on
/// an Ethernet card: its packets now arrive, and conntrack would find every checksum wrong and
/// track nothing. `--offloaded-checksums` says the device vouched for them, and the kernel's
/// lines come back. Both backends agree.
#[test]
fn arriving_packets_with_unfinished_checksums_are_invalid_unless_offloaded() {
    let original = "tests/captures/udp-reqresp-any-v4.pcap";
    let mut bytes = std::fs::read(original).unwrap();
    // Classic pcap: a 24-byte file header, then per packet a 16-byte record header and the
    // Linux cooked v2 header, whose ARPHRD type is at bytes 8..10 (big-endian).
    let mut at = 24;
    let mut packets = 0;
    while at < bytes.len() {
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let sll = at + 16;
        assert_eq!(&bytes[sll + 8..sll + 10], &772u16.to_be_bytes(), "loopback");
        assert_eq!(bytes[sll + 10], 0, "packet type: to this host");
        bytes[sll + 8..sll + 10].copy_from_slice(&1u16.to_be_bytes());
        at += 16 + caplen;
        packets += 1;
    }
    assert_eq!(packets, 4);
    let dir = std::env::temp_dir().join(format!("ctwasm-cli-arriving-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let on_a_card = dir.join("udp-reqresp-on-a-card.pcap");
    std::fs::write(&on_a_card, &bytes).unwrap();
    let on_a_card = on_a_card.to_str().unwrap();

    let (code, kernel_lines, stderr) = run(&["replay", original]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(kernel_lines.lines().count(), 3, "{kernel_lines}");
    for backend in ["component", "native"] {
        let (code, stdout, stderr) = run(&["replay", on_a_card, "--backend", backend]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stdout, "", "{backend}: nothing tracked");
        assert!(
            stderr.contains("verdicts: invalid=4"),
            "{backend}: {stderr}"
        );
        assert!(stderr.contains("invalid=4 insert=0"), "{backend}: {stderr}");

        let (code, stdout, stderr) = run(&[
            "replay",
            on_a_card,
            "--backend",
            backend,
            "--offloaded-checksums",
        ]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stdout, kernel_lines, "{backend}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
