//! Writes the seed corpus of every fuzz target to `fuzz/corpus/<target>/` (run from the repository root:
//! `cargo run --example fuzz_corpus`). The seeds come from `kla::fuzzing::seed_corpus`: the shipped default pack,
//! the example pack and config, and inputs signed with the targets' fixed keys. `tests/it/fuzz.rs` checks that the
//! committed corpus holds every current seed.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for seed in kla::fuzzing::seed_corpus(repo)? {
        let dir = repo.join("fuzz/corpus").join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&seed.name), &seed.bytes)?;
        println!("{}/{} ({} bytes)", seed.target, seed.name, seed.bytes.len());
    }
    Ok(())
}
