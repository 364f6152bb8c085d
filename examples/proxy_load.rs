//! Measures what tracking costs a proxy: `ctwasm proxy` against `ctwasm proxy --no-track`
//! (the same tokio copy loop without the tracker), on loopback, in interleaved rounds.
//!
//! Each round starts an echo server and one proxy, then `CLIENTS` threads each make `PER`
//! connections one after the other (connect, 1 KiB each way, close) and time each one. It
//! prints connections per second and the p50/p99 connection time per round, then the medians
//! and the ratio tracked / untracked.
//!
//! ```text
//! cargo build --release && cargo run --release --example proxy_load -- [ROUNDS] [BACKEND]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

const CLIENTS: usize = 16;
const PER: usize = 250;

fn echo() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// CPU time (user + system, ms) of each thread of process `pid` so far, summed by thread name
/// (tokio's workers share one), from `/proc/PID/task/*/stat`.
fn thread_cpu_ms(pid: u32) -> Vec<(String, u64)> {
    let mut by_name: Vec<(String, u64)> = Vec::new();
    let tick_ms = 10; // USER_HZ = 100 on Linux
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (name) state ..." : the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 of the whole line (utime, stime) are 11 and 12 after the name.
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, ms)) => *ms += ticks * tick_ms,
            None => by_name.push((name, ticks * tick_ms)),
        }
    }
    by_name.sort();
    by_name
}

/// One round: connections per second, p50 and p99 connection time (µs); the proxy's CPU time
/// by thread is printed.
fn round(bin: &str, upstream: &str, tracked: bool, backend: &str) -> (f64, u64, u64) {
    let mut cmd = Command::new(bin);
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream])
        .args([
            "--backend",
            backend,
            "--format",
            "json",
            "--duration",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !tracked {
        cmd.arg("--no-track");
    }
    let mut proxy = cmd.spawn().expect("ctwasm proxy starts");
    let mut line = String::new();
    BufReader::new(proxy.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("ctwasm proxy: ")
        .and_then(|r| r.split(" -> ").next())
        .expect("the proxy's address")
        .to_string();
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let data = [7u8; 1024];
                let mut back = [0u8; 1024];
                let mut times = Vec::with_capacity(PER);
                for _ in 0..PER {
                    let t = Instant::now();
                    let mut s = TcpStream::connect(&addr).expect("connect");
                    s.write_all(&data).unwrap();
                    s.read_exact(&mut back).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let _ = s.read_to_end(&mut Vec::new());
                    times.push(t.elapsed().as_micros() as u64);
                }
                times
            })
        })
        .collect();
    let mut times: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let cpu = thread_cpu_ms(proxy.id());
    // The proxy is ours (started above): stop it by its handle.
    let _ = proxy.kill();
    let _ = proxy.wait();
    println!(
        "  proxy CPU ms by thread: {}",
        cpu.iter()
            .filter(|(_, ms)| *ms > 0)
            .map(|(n, ms)| format!("{n} {ms}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    (
        times.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let backend = args.next().unwrap_or_else(|| "component".to_string());
    // The `ctwasm` binary of the same build: target/PROFILE/ctwasm, beside examples/.
    let exe = std::env::current_exe().expect("this example's path");
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("ctwasm"))
        .expect("the build directory");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release"
    );
    let bin = bin.to_str().expect("a UTF-8 path");
    let upstream = echo();
    let (mut tracked, mut plain) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Interleaved, so drift on a shared machine hits both alike.
        for on in [true, false] {
            let (cps, p50, p99) = round(bin, &upstream, on, &backend);
            println!(
                "round {r} {:<9} {cps:>8.0} conn/s  p50 {p50:>5} µs  p99 {p99:>6} µs",
                if on { "tracked" } else { "untracked" }
            );
            if on { &mut tracked } else { &mut plain }.push((cps, p50 as f64, p99 as f64));
        }
    }
    let pick =
        |v: &Vec<(f64, f64, f64)>, i: usize| median(v.iter().map(|t| [t.0, t.1, t.2][i]).collect());
    let (t, p) = (
        (pick(&tracked, 0), pick(&tracked, 1), pick(&tracked, 2)),
        (pick(&plain, 0), pick(&plain, 1), pick(&plain, 2)),
    );
    println!(
        "medians ({backend}, {CLIENTS} clients x {PER} connections, {rounds} rounds): tracked \
         {:.0} conn/s p50 {:.0} µs p99 {:.0} µs; untracked {:.0} conn/s p50 {:.0} µs p99 {:.0} µs; \
         tracked/untracked conn/s {:.3}, added p50 {:.0} µs, p99 {:.0} µs",
        t.0,
        t.1,
        t.2,
        p.0,
        p.1,
        p.2,
        t.0 / p.0,
        t.1 - p.1,
        t.2 - p.2
    );
}
