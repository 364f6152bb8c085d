//! `ctwasm component` and `ctwasm wit`: the component and its WIT package, out of the product.
//!
//! Both write the bytes this binary carries ([`ctwasm_host::artifacts`]), so the component an
//! embedder takes is the one `replay --backend component` runs. A file is written beside its
//! final name and renamed into place: a failed write never leaves half a component where a
//! previous one was.

use std::fmt;
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use ctwasm_host::artifacts;

/// `ctwasm component`: write the embedded WebAssembly component.
#[derive(clap::Args, Debug)]
pub struct ComponentArgs {
    /// Where to write it; `-` or none for stdout (refused when stdout is a terminal).
    #[arg(long, short = 'o', value_name = "FILE.wasm")]
    output: Option<PathBuf>,
}

/// `ctwasm wit`: print the WIT package the component implements.
#[derive(clap::Args, Debug)]
pub struct WitArgs {
    /// Where to write it; `-` or none for stdout.
    #[arg(long, short = 'o', value_name = "FILE.wit")]
    output: Option<PathBuf>,
}

pub fn run_component(args: ComponentArgs) -> Result<(), WriteError> {
    write_artifact(
        args.output.as_deref(),
        artifacts::COMPONENT,
        Content::Binary,
    )
}

pub fn run_wit(args: WitArgs) -> Result<(), WriteError> {
    write_artifact(
        args.output.as_deref(),
        artifacts::WIT.as_bytes(),
        Content::Text,
    )
}

/// Binary content is not written to a terminal: it would garble it and help no one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Binary,
    Text,
}

/// Why an artifact could not be written, each case naming the path it concerns.
#[derive(Debug)]
pub enum WriteError {
    /// The output path names a directory.
    IsDirectory(PathBuf),
    /// The directory the file would go into does not exist, or is not a directory.
    NoSuchDirectory(PathBuf),
    /// Binary content, no `-o`, and stdout is a terminal.
    BinaryToTerminal,
    /// The operating system refused: permissions, a full disk, a read-only file system.
    Io { path: PathBuf, source: io::Error },
    /// Writing to stdout failed (other than the reader going away, which ends the write quietly).
    Stdout(io::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::IsDirectory(p) => {
                write!(f, "{}: is a directory; name the file to write", p.display())
            }
            WriteError::NoSuchDirectory(p) => {
                write!(f, "{}: no such directory to write into", p.display())
            }
            WriteError::BinaryToTerminal => write!(
                f,
                "stdout is a terminal: refusing to print a binary component there; \
                 use -o FILE.wasm or redirect stdout"
            ),
            WriteError::Io { path, .. } => write!(f, "{}: cannot write", path.display()),
            WriteError::Stdout(_) => write!(f, "writing to stdout"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Io { source, .. } | WriteError::Stdout(source) => Some(source),
            _ => None,
        }
    }
}

fn write_artifact(output: Option<&Path>, bytes: &[u8], content: Content) -> Result<(), WriteError> {
    match output {
        None => write_stdout(bytes, content),
        Some(p) if p.as_os_str() == "-" => write_stdout(bytes, content),
        Some(p) => write_file(p, bytes),
    }
}

fn write_stdout(bytes: &[u8], content: Content) -> Result<(), WriteError> {
    let mut out = io::stdout().lock();
    if content == Content::Binary && out.is_terminal() {
        return Err(WriteError::BinaryToTerminal);
    }
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // `ctwasm wit | head` stops reading early; that is the reader's choice, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(WriteError::Stdout),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    // clap refuses an empty `-o`, so every path here names something.
    if path.is_dir() {
        return Err(WriteError::IsDirectory(path.to_path_buf()));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(WriteError::IsDirectory(path.to_path_buf()));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !dir.is_dir() {
        return Err(WriteError::NoSuchDirectory(dir.to_path_buf()));
    }
    let mut temp_name = name.to_os_string();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let io_error = |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Err(e) = fs::write(&temp, bytes) {
        let _ = fs::remove_file(&temp);
        return Err(io_error(e));
    }
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_error(e)
    })
}
