//! Builds the guest component and embeds it in the host.
//!
//! The engine crate (`core-guest`) is compiled for `wasm32-unknown-unknown` by a nested cargo
//! build with its own target directory under `OUT_DIR` (so it never fights the outer build for
//! its lock), then turned into a component with `wit-component` — the same step as
//! `wasm-tools component new`. That target rather than `wasm32-wasip2` because a std guest on
//! wasip2 imports a dozen WASI interfaces it never uses, and ours must import nothing.
//! `rerun-if-changed` comes from the nested build's depfile, so an edit to any guest source or
//! to the WIT rebuilds it and nothing else does.

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
    let target_dir = out_dir.join("guest-target");

    check_target_installed()?;

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
        .arg(&target_dir);
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

    let artifacts = target_dir.join(TARGET).join("guest");
    let module_path = artifacts.join("ctwasm_core.wasm");
    let module =
        fs::read(&module_path).with_context(|| format!("reading {}", module_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("reading the guest module's component type")?
        .validate(true)
        .encode()
        .context("encoding the guest as a component")?;
    fs::write(out_dir.join("ctwasm_core.component.wasm"), component)?;

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

/// A missing target would surface as an obscure "can't find crate for `core`"; say what to do.
fn check_target_installed() -> anyhow::Result<()> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !sysroot.join("lib/rustlib").join(TARGET).exists() {
        bail!(
            "the Rust target {TARGET} is not installed in {}: the guest component cannot be built.\n\
             Run `rustup toolchain install` in the repository (rust-toolchain.toml lists the target) \
             or `rustup target add {TARGET}`.",
            sysroot.display()
        );
    }
    Ok(())
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
