//! Running code inside another network namespace without moving the caller.
//!
//! A socket belongs to the network namespace of the thread that created it, for life. So
//! `--netns NAME` is done by [`in_netns`]: a dedicated, short-lived thread enters
//! `/run/netns/NAME` with `setns(CLONE_NEWNET)`, creates the socket (or runs the caller's
//! closure, which is how the tests make traffic inside a namespace), and exits. The caller's own
//! threads never change namespace, so nothing else in the process is affected, and a socket
//! opened that way keeps its namespace after the thread is gone.

use std::fs::File;
use std::path::PathBuf;

use crate::ctnetlink::CtnlError;
use crate::sys;

/// The file of a named namespace: `/run/netns/NAME`, or `NAME` itself when it is a path.
pub fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

/// Runs `f` in the network namespace `netns` (or here, for `None`) and returns its result.
///
/// With a namespace, `f` runs on a new thread that first enters it with
/// `setns(CLONE_NEWNET)`; the thread ends with `f`, so the namespace change never leaks into
/// the caller's threads. Sockets `f` creates stay in that namespace.
pub fn in_netns<T, F>(netns: Option<&str>, f: F) -> Result<T, CtnlError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let Some(name) = netns else {
        return Ok(f());
    };
    let file = File::open(netns_path(name)).map_err(|source| CtnlError::Netns {
        name: name.to_string(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread changes namespace, and it ends with `f`.
                sys::enter_netns(&file).map_err(|source| CtnlError::Netns {
                    name: name.to_string(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| CtnlError::ThreadPanicked)?
    })
}
