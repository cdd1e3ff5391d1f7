//! Helpers shared by the CLI's end-to-end tests: the repository root, running the binary from
//! it, its output as text, and the test models (skipped with a note when not fetched).

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `baicai ARGS` in the repository root.
pub fn baicai(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baicai"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run baicai")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The test model's path, or `None` (with a note) when it has not been fetched.
pub fn model(name: &str) -> Option<String> {
    let p = root().join("models").join(name);
    if p.exists() {
        Some(p.display().to_string())
    } else {
        eprintln!("SKIP: {} missing; run scripts/fetch-models.sh", p.display());
        None
    }
}
