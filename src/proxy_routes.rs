//! The routes of `ctwasm proxy`: where it accepts, where it sends, and the zone it tracks in.
//!
//! Routes come from `--listen [udp:]ADDR --upstream ADDR` pairs (the n-th pairs with the n-th,
//! the zone is the pair's position) and from a `--config FILE` in TOML, for setups too long for
//! a command line or kept under version control:
//!
//! ```toml
//! [[route]]
//! listen = "127.0.0.1:8443"
//! upstream = "10.0.0.2:443"
//! zone = 7              # default: the route's position among all routes
//! protocol = "tcp"      # "tcp" (default) or "udp"
//! ```
//!
//! The file's routes follow the command line's. A file that cannot be read or parsed, a key
//! this version does not know, or a route without both addresses is refused with the file's
//! name and the place of the fault, before anything listens.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// What a route carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub zone: u16,
    pub protocol: Protocol,
}

/// A `--listen` value: an address, `udp:` before it for a UDP route (`tcp:` is accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenArg {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl std::str::FromStr for ListenArg {
    type Err = String;
    fn from_str(value: &str) -> Result<ListenArg, String> {
        let (protocol, addr) = match value.split_once(':') {
            Some(("udp", rest)) => (Protocol::Udp, rest),
            Some(("tcp", rest)) => (Protocol::Tcp, rest),
            _ => (Protocol::Tcp, value),
        };
        let addr = addr.parse().map_err(|_| {
            format!("`{value}` is not [udp:]ADDRESS:PORT (e.g. 127.0.0.1:8000, udp:[::1]:53)")
        })?;
        Ok(ListenArg { addr, protocol })
    }
}

/// The routes file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    route: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    listen: SocketAddr,
    upstream: SocketAddr,
    zone: Option<u16>,
    #[serde(default)]
    protocol: Protocol,
}

/// The most routes: one zone each when the zones are the positions.
pub const MAX_ROUTES: usize = u16::MAX as usize + 1;

/// Every route: the command line's pairs, then the file's.
pub fn routes(
    listen: &[ListenArg],
    upstream: &[SocketAddr],
    config: Option<&Path>,
) -> Result<Vec<Route>> {
    if listen.len() != upstream.len() {
        bail!(
            "{} --listen and {} --upstream: give them in pairs",
            listen.len(),
            upstream.len()
        );
    }
    let mut routes: Vec<Route> = listen
        .iter()
        .zip(upstream)
        .enumerate()
        .map(|(i, (l, &upstream))| Route {
            listen: l.addr,
            upstream,
            zone: i as u16,
            protocol: l.protocol,
        })
        .collect();
    if routes.len() > MAX_ROUTES {
        bail!("at most {MAX_ROUTES} routes (one zone each)");
    }
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--config {}: cannot read it", path.display()))?;
        let file: RoutesFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
        for r in file.route {
            if routes.len() == MAX_ROUTES {
                bail!(
                    "--config {}: at most {MAX_ROUTES} routes in all",
                    path.display()
                );
            }
            routes.push(Route {
                listen: r.listen,
                upstream: r.upstream,
                zone: r.zone.unwrap_or(routes.len() as u16),
                protocol: r.protocol,
            });
        }
    }
    if routes.is_empty() {
        bail!("no route: give --listen ADDR --upstream ADDR, or --config FILE with [[route]]s");
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A routes file, removed when dropped.
    struct Temp(std::path::PathBuf);

    impl Temp {
        fn with(text: &str) -> Temp {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("ctwasm-routes-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Temp(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_command_lines_pairs_come_first_in_the_zones_of_their_positions() {
        let listen = [
            "127.0.0.1:1".parse().unwrap(),
            "udp:[::1]:2".parse().unwrap(),
        ];
        let upstream = [addr("127.0.0.1:3"), addr("[::1]:4")];
        let t = Temp::with(
            "[[route]]\nlisten = \"127.0.0.1:5\"\nupstream = \"127.0.0.1:6\"\n\
             [[route]]\nlisten = \"127.0.0.1:7\"\nupstream = \"127.0.0.1:8\"\nzone = 9\n\
             protocol = \"udp\"\n",
        );
        let r = routes(&listen, &upstream, Some(t.path())).unwrap();
        let seen: Vec<_> = r
            .iter()
            .map(|r| (r.listen.port(), r.upstream.port(), r.zone, r.protocol))
            .collect();
        assert_eq!(
            seen,
            [
                (1, 3, 0, Protocol::Tcp),
                (2, 4, 1, Protocol::Udp),
                (5, 6, 2, Protocol::Tcp),
                (7, 8, 9, Protocol::Udp),
            ]
        );
    }

    #[test]
    fn a_listen_value_names_its_protocol_or_is_refused() {
        let tcp: ListenArg = "tcp:127.0.0.1:80".parse().unwrap();
        assert_eq!(tcp.protocol, Protocol::Tcp);
        let v6: ListenArg = "[::1]:80".parse().unwrap();
        assert_eq!((v6.protocol, v6.addr), (Protocol::Tcp, addr("[::1]:80")));
        for bad in [
            "sctp:127.0.0.1:80",
            "udp:",
            "udp:localhost:53",
            "127.0.0.1",
            "",
        ] {
            let e = bad.parse::<ListenArg>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn hostile_files_are_refused_with_the_place_of_the_fault() {
        for (text, why) in [
            (
                "[[route]]\nlisten = \"127.0.0.1:5\"\n",
                "missing field `upstream`",
            ),
            (
                "[[route]]\nlisten = \"127.0.0.1:5\"\nupstream = \"127.0.0.1:6\"\nweight = 3\n",
                "unknown field `weight`",
            ),
            (
                "[[route]]\nlisten = \"127.0.0.1:5\"\nupstream = \"127.0.0.1:6\"\nzone = 70000\n",
                "zone",
            ),
            (
                "[[route]]\nlisten = \"127.0.0.1:5\"\nupstream = \"127.0.0.1:6\"\nzone = -1\n",
                "zone",
            ),
            (
                "[[route]]\nlisten = \"127.0.0.1:5\"\nupstream = \"127.0.0.1:6\"\nprotocol = \"sctp\"\n",
                "unknown variant `sctp`",
            ),
            (
                "[[route]]\nlisten = \"nowhere\"\nupstream = \"127.0.0.1:6\"\n",
                "listen",
            ),
            ("[[route]\nlisten = 1", "line 1"),
            ("routes = 3\n", "unknown field `routes`"),
            ("\u{0}\u{1}garbage", "--config"),
            ("", "no route"),
        ] {
            let t = Temp::with(text);
            let e = format!("{:#}", routes(&[], &[], Some(t.path())).unwrap_err());
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let missing = routes(&[], &[], Some(Path::new("/nonexistent/routes.toml"))).unwrap_err();
        assert!(
            format!("{missing:#}").contains("--config /nonexistent/routes.toml"),
            "{missing:#}"
        );
        let unpaired = routes(&["127.0.0.1:1".parse().unwrap()], &[], None).unwrap_err();
        assert!(unpaired.to_string().contains("in pairs"), "{unpaired}");
    }
}
