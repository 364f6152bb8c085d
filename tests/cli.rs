//! Hostile values for the CLI's seconds and rates: each is refused with a clear message and a
//! usage or run error (exit 2 or 1), never a panic (exit 101), before anything starts.

use std::process::Command;

fn refused(args: &[&str], expect: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
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
