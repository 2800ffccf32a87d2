//! Writes the fuzz targets' seed inputs into the corpus (`fuzz/corpus/<target>/seed-*`):
//!   cargo run -p thinpool-csi --features test-double --example fuzz_seeds -- fuzz/corpus
//! A unit test checks that the committed corpus holds them as written here.

use std::path::PathBuf;

use thinpool_csi::csi::fuzzing::{encode, parser_seeds, seeds};

fn main() -> anyhow::Result<()> {
    let corpus = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let requests = corpus.join("csi_requests");
    let parsers = corpus.join("parsers");
    std::fs::create_dir_all(&requests)?;
    std::fs::create_dir_all(&parsers)?;
    for (name, frames) in seeds() {
        std::fs::write(requests.join(format!("seed-{name}")), encode(&frames))?;
    }
    for (i, text) in parser_seeds().iter().enumerate() {
        std::fs::write(parsers.join(format!("seed-{i}")), text)?;
    }
    println!("seeds written under {}", corpus.display());
    Ok(())
}
