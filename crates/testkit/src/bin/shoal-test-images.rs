//! `shoal-test-images DIR`: writes busybox.tar and probe.tar (root filesystem tarballs) to DIR,
//! for `shoal image import` in the demo and the benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: shoal-test-images DIR");
        return ExitCode::from(2);
    };
    let run = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        shoal_testkit::busybox_tar(&dir.join("busybox.tar"))?;
        shoal_testkit::probe_tar(&dir.join("probe.tar"))?;
        Ok(())
    };
    match run() {
        Ok(()) => {
            println!("{}", dir.join("busybox.tar").display());
            println!("{}", dir.join("probe.tar").display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-test-images: {e}");
            ExitCode::FAILURE
        }
    }
}
