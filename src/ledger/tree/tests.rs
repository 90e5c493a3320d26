use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;
use serde_json::Value;

use super::*;

// ---------- naive recursive reference (RFC 6962 s2.1 written literally) ----------

fn ref_mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
        }
    }
}

fn ref_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return vec![];
    }
    let k = split_point(n as u64) as usize;
    if m < k {
        let mut p = ref_path(m, &d[..k]);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_path(m - k, &d[k..]);
        p.push(ref_mth(&d[..k]));
        p
    }
}

fn ref_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![ref_mth(d)] };
    }
    let k = split_point(n as u64) as usize;
    if m <= k {
        let mut p = ref_subproof(m, &d[..k], b);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_subproof(m - k, &d[k..], false);
        p.push(ref_mth(&d[..k]));
        p
    }
}

fn leaves(n: usize) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
}

fn mem_tree(d: &[Hash]) -> MemTree {
    let mut t = MemTree::new();
    for h in d {
        t.push_leaf_hash(*h);
    }
    t
}

fn check_size(d: &[Hash], tree: &MemTree, n: usize, idx: usize, m: usize) {
    let root_n = root(tree, n as u64).expect("root");
    assert_eq!(root_n, ref_mth(&d[..n]), "root size {n}");
    let p = inclusion_proof(tree, idx as u64, n as u64).expect("inclusion");
    assert_eq!(p, ref_path(idx, &d[..n]), "path {idx} in {n}");
    verify_inclusion(idx as u64, n as u64, &d[idx], &p, &root_n).expect("verifies");
    if !p.is_empty() {
        let mut extra = p.clone();
        extra.push(root_n);
        assert!(verify_inclusion(idx as u64, n as u64, &d[idx], &extra, &root_n).is_err());
        assert!(verify_inclusion(idx as u64, n as u64, &d[idx], &p[1..], &root_n).is_err());
    }
    assert!(verify_inclusion(n as u64, n as u64, &d[idx], &p, &root_n).is_err());
    let c = consistency_proof(tree, m as u64, n as u64).expect("consistency");
    assert_eq!(c, ref_subproof(m, &d[..n], true), "consistency {m}->{n}");
    let root_m = ref_mth(&d[..m]);
    verify_consistency(m as u64, n as u64, &root_m, &root_n, &c).expect("consistent");
    if m < n {
        assert!(verify_consistency(m as u64, n as u64, &root_n, &root_n, &c).is_err());
    }
}

#[test]
fn small_trees_exhaustively_match_reference() {
    let d = leaves(70);
    let tree = mem_tree(&d);
    for n in 1..=70 {
        for idx in 0..n {
            check_size(&d, &tree, n, idx, idx + 1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn sampled_trees_up_to_3000_match_reference(n in 1usize..3000, a in any::<u64>(), b in any::<u64>()) {
        let d = leaves(n);
        let tree = mem_tree(&d);
        let idx = (a % n as u64) as usize;
        let m = (b % n as u64) as usize + 1;
        check_size(&d, &tree, n, idx, m);
        prop_assert_eq!(tree.root(), ref_mth(&d));
    }
}

#[test]
fn ct_reference_roots_for_eight_leaves() {
    let inputs: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
        ],
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    assert_eq!(
        hex::encode(empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let mut t = MemTree::new();
    for (i, input) in inputs.iter().enumerate() {
        t.push(input);
        assert_eq!(hex::encode(t.root()), roots[i], "size {}", i + 1);
        assert_eq!(hex::encode(root(&t, i as u64 + 1).expect("root")), roots[i]);
    }
}

/// rs_merkle builds the tree bottom-up, pairing neighbours and promoting a lone last
/// node unchanged; for any n that yields exactly RFC 6962's left-balanced shape. Its
/// `Hasher::hash` cannot tell a leaf from an interior node, so we feed it our
/// pre-prefixed leaf hashes (`from_leaves`) and override `concat_and_hash` to add the
/// 0x01 interior prefix. Its proofs are not used: they are lenient (see ARCHITECTURE.md).
#[derive(Clone)]
struct Rfc6962Sha256;

impl rs_merkle::Hasher for Rfc6962Sha256 {
    type Hash = [u8; 32];
    fn hash(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }
    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(r) => node_hash(left, r),
            None => *left,
        }
    }
}

#[test]
fn roots_match_rs_merkle_for_every_size_up_to_600() {
    let d = leaves(600);
    let mut t = MemTree::new();
    for (i, h) in d.iter().enumerate() {
        t.push_leaf_hash(*h);
        let rs = rs_merkle::MerkleTree::<Rfc6962Sha256>::from_leaves(&d[..=i]);
        assert_eq!(rs.root(), Some(t.root()), "size {}", i + 1);
    }
}

// ---------- transparency-dev known-answer vectors ----------

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc6962")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("vector dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
}

fn hash_field(v: &Value, key: &str) -> Option<Hash> {
    bytes_field(v, key)?.try_into().ok()
}

/// Roots are passed as raw bytes: some equal-size vectors use non-hash placeholders.
fn bytes_field(v: &Value, key: &str) -> Option<Vec<u8>> {
    B64.decode(v.get(key)?.as_str()?).ok()
}

fn proof_field(v: &Value) -> Option<Vec<Hash>> {
    match v.get("proof") {
        None | Some(Value::Null) => Some(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|h| B64.decode(h.as_str()?).ok()?.try_into().ok())
            .collect(),
        _ => None,
    }
}

fn uint(v: &Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// Runs one vector; `None` means the input could not even be represented (a rejection).
fn run_vector(kind: &str, v: &Value) -> Option<bool> {
    let proof = proof_field(v)?;
    let ok = match kind {
        "inclusion" => verify_inclusion(
            uint(v, "leafIdx")?,
            uint(v, "treeSize")?,
            &hash_field(v, "leafHash")?,
            &proof,
            &hash_field(v, "root")?,
        )
        .is_ok(),
        "consistency" => verify_consistency(
            uint(v, "size1")?,
            uint(v, "size2")?,
            &bytes_field(v, "root1")?,
            &bytes_field(v, "root2")?,
            &proof,
        )
        .is_ok(),
        "subtreeinclusion" => verify_subtree_inclusion(
            uint(v, "leafIdx")?,
            uint(v, "start")?,
            uint(v, "end")?,
            &hash_field(v, "leafHash")?,
            &proof,
            &hash_field(v, "root")?,
        )
        .is_ok(),
        "subtreeconsistency" => verify_subtree_consistency(
            uint(v, "start")?,
            uint(v, "end")?,
            uint(v, "size")?,
            &bytes_field(v, "root1")?,
            &bytes_field(v, "root2")?,
            &proof,
        )
        .is_ok(),
        other => panic!("unknown vector kind {other}"),
    };
    Some(ok)
}

#[test]
fn transparency_dev_vectors_all_pass() {
    let mut total = 0;
    for kind in [
        "inclusion",
        "consistency",
        "subtreeinclusion",
        "subtreeconsistency",
    ] {
        let mut files = vec![];
        json_files(&data_dir().join(kind), &mut files);
        let (mut happy, mut bad) = (0, 0);
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read vector");
            let v: Value = serde_json::from_str(&text).expect("vector json");
            let want_err = v.get("wantErr").and_then(Value::as_bool).unwrap_or(false);
            let ok = run_vector(kind, &v).unwrap_or(false);
            if want_err {
                assert!(!ok, "must reject: {}", f.display());
                bad += 1;
            } else {
                assert!(ok, "must accept: {}", f.display());
                happy += 1;
            }
        }
        assert!(happy > 0 && bad > 0, "{kind}: {happy} happy, {bad} bad");
        total += files.len();
    }
    assert_eq!(total, 518, "every vector file was run");
}

#[test]
fn frontier_matches_stored_nodes() {
    let d = leaves(100);
    let t = mem_tree(&d);
    for n in 0..=100u64 {
        let nodes = frontier_positions(n)
            .into_iter()
            .map(|(l, i)| t.node(l, i).expect("node"))
            .collect();
        let f = Frontier::from_nodes(n, nodes).expect("frontier");
        assert_eq!(f.root(), ref_mth(&d[..n as usize]));
    }
}

#[test]
fn subtree_validity() {
    assert!(is_valid_subtree(0, 5));
    assert!(is_valid_subtree(4, 6));
    assert!(is_valid_subtree(8, 13));
    assert!(!is_valid_subtree(1, 3));
    assert!(!is_valid_subtree(2, 5));
    assert!(!is_valid_subtree(3, 3));
    assert!(!is_valid_subtree(4, 3));
}
