//! Build script: the commit this binary was built from, for `model_bridge_build_info` and
//! `--version`. `MB_GIT_COMMIT` overrides it (builds from a tarball have no `.git`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MB_GIT_COMMIT");
    // HEAD moves on checkout, the branch ref on commit; packed-refs after a gc.
    for p in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = std::env::var("MB_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=MB_GIT_COMMIT={}",
        commit
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into())
    );
}
