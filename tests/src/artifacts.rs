//! Where the tests of what users install find it: the workspace, the cargo
//! target directory and `target/dist/` (`cargo xtask dist`), and a command's
//! output as one readable block for assertion messages.

use std::path::{Path, PathBuf};
use std::process::Output;

/// The workspace root (the parent of this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// `target/dist/`, where `cargo xtask dist` writes binaries, packages and the image.
pub fn dist_dir() -> PathBuf {
    target_dir().join("dist")
}

/// Exit status, stdout and stderr of a finished command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
