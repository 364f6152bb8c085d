//! Builds the guest component and embeds it in the host.
//!
//! The engine crate (`core-guest`) is compiled for `wasm32-unknown-unknown` by a nested cargo
//! build with its own target directory under `OUT_DIR` (so it never fights the outer build for
//! its lock), then turned into a component with `wit-component` — the same step as
//! `wasm-tools component new`. That target rather than `wasm32-wasip2` because a std guest on
//! wasip2 imports a dozen WASI interfaces it never uses, and ours must import nothing. A
//! toolchain without that target gets it through rustup, so the README's first command works on
//! a fresh machine.
//! `rerun-if-changed` comes from the nested build's depfile, so an edit to any guest source or
//! to the WIT rebuilds it and nothing else does. A second build of the same guest, optimized for
//! size, is made beside it for the hot-swap tests (a really different build) and not embedded.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const TARGET: &str = "wasm32-unknown-unknown";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("host/ has a parent")?;

    ensure_target_installed()?;

    let artifacts = build_guest(workspace, &out_dir.join("guest-target"), &[])?;
    componentize(
        &artifacts.join("ctwasm_core.wasm"),
        &out_dir.join("ctwasm_core.component.wasm"),
    )?;
    // A second build of the same sources, optimized for size rather than speed: different code
    // throughout, the same snapshots. Tests hot-swap a running tracker between the two; it is
    // not embedded.
    let size_artifacts = build_guest(
        workspace,
        &out_dir.join("guest-target-size"),
        &["-C", "opt-level=s"],
    )?;
    componentize(
        &size_artifacts.join("ctwasm_core.wasm"),
        &out_dir.join("ctwasm_core.size.component.wasm"),
    )?;

    for path in depfile_inputs(&artifacts.join("ctwasm_core.d"))? {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}

/// Builds `ctwasm-core` for the guest's target into `target_dir`, with `rustc_args` for the
/// crate itself; returns the directory holding `ctwasm_core.wasm` and its depfile.
fn build_guest(
    workspace: &Path,
    target_dir: &Path,
    rustc_args: &[&str],
) -> anyhow::Result<PathBuf> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "rustc",
            "--quiet",
            "-p",
            "ctwasm-core",
            "--lib",
            "--crate-type",
            "cdylib",
        ])
        .args(["--target", TARGET, "--profile", "guest", "--target-dir"])
        .arg(target_dir);
    if !rustc_args.is_empty() {
        cmd.arg("--").args(rustc_args);
    }
    // Variables the outer build sets that must not leak into the guest's build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("running the nested cargo build of the guest")?;
    if !status.success() {
        bail!("building the guest (ctwasm-core for {TARGET}) failed; see the errors above");
    }
    Ok(target_dir.join(TARGET).join("guest"))
}

/// Turns the core module at `module_path` into a component at `out`.
fn componentize(module_path: &Path, out: &Path) -> anyhow::Result<()> {
    let module =
        fs::read(module_path).with_context(|| format!("reading {}", module_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("reading the guest module's component type")?
        .validate(true)
        .encode()
        .context("encoding the guest as a component")?;
    fs::write(out, component).with_context(|| format!("writing {}", out.display()))
}

/// Makes sure the guest's target is installed in the toolchain that builds it: if it is missing
/// and rustup is at hand, installs it (as rustup itself would from rust-toolchain.toml, where
/// on-demand installs are off) and says so; otherwise stops with what to do, instead of the
/// obscure "can't find crate for `core`" the nested build would end with.
fn ensure_target_installed() -> anyhow::Result<()> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let installed = || sysroot.join("lib/rustlib").join(TARGET).exists();
    if installed() {
        return Ok(());
    }
    // rustup names the toolchain running this build in RUSTUP_TOOLCHAIN; without it, rustup
    // picks the same one from rust-toolchain.toml in the workspace.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    // Captured: a build script's stdout is read by cargo as instructions.
    let attempt = match rustup.output() {
        Ok(out) if out.status.success() && installed() => {
            println!(
                "cargo:warning=the Rust target {TARGET} was missing from {}; installed it with \
                 `rustup target add {TARGET}`",
                toolchain.as_deref().unwrap_or("the toolchain")
            );
            return Ok(());
        }
        Ok(out) if out.status.success() => format!(
            "`rustup target add {TARGET}` succeeded for another toolchain than the one in RUSTC"
        ),
        Ok(out) => format!(
            "`rustup target add {TARGET}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "rustup is not on PATH".into(),
        Err(e) => format!("rustup could not be run ({e})"),
    };
    bail!(
        "the Rust target {TARGET} is not installed in {} and could not be added: {attempt}\n\
         The guest component cannot be built without it: run `rustup toolchain install` in the \
         repository (rust-toolchain.toml lists the target) or `rustup target add {TARGET}`.",
        sysroot.display()
    );
}

/// The inputs a Makefile-style depfile lists (`output: input input ...`, spaces escaped).
fn depfile_inputs(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut inputs = Vec::new();
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = deps.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    current.push(' ');
                    chars.next();
                }
                ' ' => {
                    if !current.is_empty() {
                        inputs.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                _ => current.push(c),
            }
        }
        if !current.is_empty() {
            inputs.push(PathBuf::from(current));
        }
    }
    Ok(inputs)
}
