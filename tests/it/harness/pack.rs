//! Policy packs a test writes for itself: unsigned `pack.yaml` files in a packs directory that the server loads
//! with `allow_unsigned` (signed packs are `policy.rs`'s own subject).

use std::path::{Path, PathBuf};

/// The `pack.yaml` of pack `name` at `version`: default decision `allow`, then `rules` as written (YAML list items
/// indented by four spaces, each line ending in `\n`).
pub fn pack_yaml(name: &str, version: &str, rules: &str) -> String {
    format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: {name}, version: {version}}}\nspec:\n  defaultDecision: allow\n  rules:\n{rules}"
    )
}

/// Writes `yaml` as `<root>/<name>/pack.yaml` (over any earlier one, for a reload); returns the pack's directory.
pub fn write_pack_file(root: &Path, name: &str, yaml: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("the pack directory");
    std::fs::write(dir.join("pack.yaml"), yaml).expect("pack.yaml");
    dir
}

/// Writes pack `name` 1.0.0 with `rules` ([`pack_yaml`]) under `root`; returns the pack's directory.
pub fn write_pack(root: &Path, name: &str, rules: &str) -> PathBuf {
    write_pack_file(root, name, &pack_yaml(name, "1.0.0", rules))
}
