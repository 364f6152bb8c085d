//! An embedder takes the component and its WIT package out of the product: `ctwasm component`
//! writes the very bytes the host runs, as a component wasmtime accepts, exporting the
//! conntrack interface of the package `ctwasm wit` prints, which is `wit/ctwasm.wit`. Paths that
//! cannot be written are refused with an error that names them, and leave nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

fn ctwasm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ctwasm")
}

/// A fresh, empty directory of this test's own under cargo's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("artifacts-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wit_file() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("wit/ctwasm.wit")).unwrap()
}

/// `package ctwasm:core@0.1.0;` → ("ctwasm:core", "0.1.0").
fn wit_package(wit: &str) -> (String, String) {
    let line = wit
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("package "))
        .expect("the WIT names its package");
    let (name, version) = line.trim_end_matches(';').split_once('@').unwrap();
    (name.to_string(), version.to_string())
}

/// The names the component exports, after wasmtime has validated and compiled it.
fn component_exports(bytes: &[u8]) -> Vec<String> {
    let engine = Engine::new(&Config::new()).unwrap();
    let component = Component::from_binary(&engine, bytes).expect("a valid component");
    component
        .component_type()
        .exports(&engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn component_written_to_a_file_is_the_embedded_component_and_exports_its_interfaces() {
    let dir = scratch("file");
    let path = dir.join("ctwasm.wasm");
    let out = ctwasm(&["component", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    let bytes = fs::read(&path).unwrap();
    assert!(bytes == ctwasm_host::artifacts::COMPONENT);
    let (package, version) = wit_package(&wit_file());
    let interfaces = ["types", "tracker", "proxy", "expect"];
    assert_eq!(
        component_exports(&bytes),
        interfaces.map(|i| format!("{package}/{i}@{version}"))
    );
    // Nothing but the file: no temporary left beside it.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn component_to_stdout_with_no_output_or_a_dash() {
    for args in [&["component"][..], &["component", "-o", "-"]] {
        let out = ctwasm(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(out.stdout == ctwasm_host::artifacts::COMPONENT, "{args:?}");
    }
}

#[test]
fn component_replaces_a_longer_existing_file_entirely() {
    let dir = scratch("replace");
    let path = dir.join("old.wasm");
    fs::write(
        &path,
        vec![0xa5; ctwasm_host::artifacts::COMPONENT.len() + 4096],
    )
    .unwrap();
    let out = ctwasm(&["component", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&path).unwrap() == ctwasm_host::artifacts::COMPONENT);
}

#[test]
fn an_existing_directory_is_refused_and_left_alone() {
    let dir = scratch("dir");
    let target = dir.join("out.wasm");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"keep").unwrap();
    for path in [&dir, &target] {
        let out = ctwasm(&["component", "-o", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains(&*path.to_string_lossy()) && err.contains("is a directory"),
            "{err}"
        );
    }
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"keep");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn a_missing_directory_or_a_file_as_directory_is_refused() {
    let dir = scratch("missing");
    let file = dir.join("plain");
    fs::write(&file, b"x").unwrap();
    for parent in [dir.join("no/such/dir"), file.clone()] {
        let path = parent.join("ctwasm.wasm");
        for command in ["component", "wit"] {
            let out = ctwasm(&[command, "-o", path.to_str().unwrap()]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{command} -o {}",
                path.display()
            );
            let err = stderr(&out);
            assert!(
                err.contains(&*parent.to_string_lossy()) && err.contains("no such directory"),
                "{err}"
            );
        }
    }
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

#[test]
fn an_empty_path_is_a_usage_error() {
    let out = ctwasm(&["component", "-o", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn wit_prints_the_package_in_wit_dir() {
    let wit = wit_file();
    let out = ctwasm(&["wit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), wit);
    assert_eq!(ctwasm_host::artifacts::WIT, wit);

    let dir = scratch("wit");
    let path = dir.join("ctwasm.wit");
    let out = ctwasm(&["wit", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&path).unwrap(), wit);
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .arg("component")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
