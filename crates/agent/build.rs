//! Builds `shoal-init` (init/main.rs) as a static binary the agent embeds and mounts into
//! containers with `init: true`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "init/main.rs";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("shoal-init");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .expect("running rustc for shoal-init");
    assert!(status.success(), "building shoal-init failed");
}
