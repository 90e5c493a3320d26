//! A Merkle log and checkpoint verifier written for these tests, sharing no code with kla: RFC 6962 hashing,
//! RFC 9162 inclusion and consistency verification, C2SP checkpoint parsing and Ed25519 signature checks (with
//! `ring`). Tests check kla's proofs with it, never with kla's own verification code.

use crate::harness::Api;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------------------
// Merkle hashing and proofs.

pub type H = [u8; 32];

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf(data: &[u8]) -> H {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 interior node: SHA-256(0x01 || left || right).
pub fn node(l: &H, r: &H) -> H {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// Naive recursive MTH (RFC 6962 2.1).
pub fn mth(leaves: &[H]) -> H {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// `sha256:<hex>` → hash (panics on anything else: the API promises this shape).
pub fn ph(s: &Value) -> H {
    let s = s
        .as_str()
        .unwrap_or_else(|| panic!("hash string expected, got {s}"));
    let hx = s
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("no sha256: prefix in {s}"));
    assert_eq!(hx.len(), 64, "{s}");
    hex::decode(hx).unwrap().try_into().unwrap()
}

pub fn hashes(v: &Value) -> Vec<H> {
    v.as_array().expect("array of hashes").iter().map(ph).collect()
}

/// RFC 9162 2.1.3.2: the root implied by an inclusion proof, or None if the proof has the wrong shape.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &H, proof: &[H]) -> Option<H> {
    if index >= size {
        return None;
    }
    let (mut fnn, mut snn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snn == 0 {
            return None;
        }
        if fnn & 1 == 1 || fnn == snn {
            r = node(p, &r);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                snn >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    (snn == 0).then_some(r)
}

/// RFC 9162 2.1.4.2 consistency verification.
pub fn consistent(size1: u64, size2: u64, root1: &H, root2: &H, proof: &[H]) -> bool {
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 || size1 > size2 || proof.is_empty() {
        return false;
    }
    let mut path = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let (mut fnn, mut snn) = (size1 - 1, size2 - 1);
    while fnn & 1 == 1 {
        fnn >>= 1;
        snn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snn == 0 {
            return false;
        }
        if fnn & 1 == 1 || fnn == snn {
            fr = node(c, &fr);
            sr = node(c, &sr);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                snn >>= 1;
            }
        } else {
            sr = node(&sr, c);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    snn == 0 && &fr == root1 && &sr == root2
}

#[test]
fn the_independent_merkle_code_agrees_with_itself() {
    // Inclusion and consistency proofs built from the naive MTH verify with the iterative algorithms.
    let leaves: Vec<H> = (0..13u8).map(|i| leaf(&[i])).collect();
    fn incl(leaves: &[H], m: usize) -> Vec<H> {
        if leaves.len() <= 1 {
            return vec![];
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        if m < k {
            let mut p = incl(&leaves[..k], m);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = incl(&leaves[k..], m - k);
            p.push(mth(&leaves[..k]));
            p
        }
    }
    fn subproof(m: usize, d: &[H], b: bool) -> Vec<H> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![mth(d)] };
        }
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(mth(&d[..k]));
            p
        }
    }
    for n in 1..=leaves.len() {
        let root = mth(&leaves[..n]);
        for m in 0..n {
            let p = incl(&leaves[..n], m);
            assert_eq!(
                root_from_inclusion(m as u64, n as u64, &leaves[m], &p),
                Some(root)
            );
            if let Some(first) = p.first() {
                let mut bad = p.clone();
                bad[0][0] ^= 1;
                assert_ne!(
                    root_from_inclusion(m as u64, n as u64, &leaves[m], &bad),
                    Some(root),
                    "{first:?}"
                );
                assert_eq!(root_from_inclusion(m as u64, n as u64, &leaves[m], &p[1..]), None);
            }
        }
        for m in 1..n {
            let p = subproof(m, &leaves[..n], true);
            let r1 = mth(&leaves[..m]);
            assert!(consistent(m as u64, n as u64, &r1, &root, &p), "{m} -> {n}");
            assert!(!consistent(m as u64, n as u64, &root, &r1, &p));
            let mut bad = p.clone();
            bad[0][5] ^= 0x80;
            assert!(!consistent(m as u64, n as u64, &r1, &root, &bad));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoints (C2SP signed notes) and verifier keys.

/// A ledger verifier key, `<name>+<hex id>+<base64(0x01 || pubkey)>`.
#[derive(Debug, Clone)]
pub struct VKey {
    pub name: String,
    pub id: [u8; 4],
    pub pubkey: [u8; 32],
}

/// Parses `<name>+<hex id>+<base64(0x01 || pubkey)>` and checks the key id.
pub fn parse_vkey(text: &str) -> VKey {
    assert!(text.ends_with('\n'), "key ends with a newline: {text:?}");
    let t = text.trim_end_matches('\n');
    let parts: Vec<&str> = t.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3, "{t}");
    let raw = B64.decode(parts[2]).expect("base64 key");
    assert_eq!(raw.len(), 33, "alg byte + 32-byte key");
    assert_eq!(raw[0], 0x01, "Ed25519 algorithm byte");
    let pubkey: [u8; 32] = raw[1..].try_into().unwrap();
    let id: [u8; 4] = hex::decode(parts[1])
        .expect("hex id")
        .try_into()
        .expect("4-byte id");
    let mut h = Sha256::new();
    h.update(parts[0].as_bytes());
    h.update(b"\n");
    h.update([0x01]);
    h.update(pubkey);
    let d = h.finalize();
    assert_eq!(id, d[..4], "key id = SHA-256(name || \\n || 0x01 || pubkey)[..4]");
    VKey {
        name: parts[0].to_owned(),
        id,
        pubkey,
    }
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone)]
pub struct Cp {
    pub origin: String,
    pub size: u64,
    pub root: H,
    pub text: String,
}

/// Parses a C2SP checkpoint and verifies its signature with `key` using ring.
pub fn verify_checkpoint(text: &str, key: &VKey) -> Cp {
    let (head, sigs) = text
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no blank line: {text:?}"));
    let body = format!("{head}\n");
    let lines: Vec<&str> = head.split('\n').collect();
    assert_eq!(lines.len(), 3, "origin, size, root: {text:?}");
    let size: u64 = lines[1].parse().expect("size");
    let root: H = B64
        .decode(lines[2])
        .expect("root b64")
        .try_into()
        .expect("32-byte root");
    let sig_lines: Vec<&str> = sigs
        .strip_suffix('\n')
        .expect("final newline")
        .split('\n')
        .collect();
    assert_eq!(sig_lines.len(), 1, "one signature: {text:?}");
    let rest = sig_lines[0].strip_prefix("\u{2014} ").expect("em dash");
    let (name, sig) = rest.split_once(' ').expect("name sig");
    assert_eq!(name, key.name);
    assert_eq!(lines[0], key.name, "origin = key name");
    let sig = B64.decode(sig).expect("sig b64");
    assert_eq!(sig.len(), 68, "key id + 64-byte signature");
    assert_eq!(sig[..4], key.id, "signature key id");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.pubkey)
        .verify(body.as_bytes(), &sig[4..])
        .expect("checkpoint signature verifies (ring)");
    Cp {
        origin: lines[0].to_owned(),
        size,
        root,
        text: text.to_owned(),
    }
}

#[test]
fn checkpoint_checks_reject_a_forged_note() {
    // The checkpoint verifier above must not be vacuous: sign with ring, then tamper.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    use ring::signature::KeyPair;
    let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
    let mut h = Sha256::new();
    h.update(b"test/log\n\x01");
    h.update(pk);
    let id = &h.finalize()[..4];
    let mut raw = vec![1u8];
    raw.extend_from_slice(&pk);
    let key = parse_vkey(&format!("test/log+{}+{}\n", hex::encode(id), B64.encode(&raw)));
    let body = format!("test/log\n7\n{}\n", B64.encode([9u8; 32]));
    let mut sig = id.to_vec();
    sig.extend_from_slice(kp.sign(body.as_bytes()).as_ref());
    let text = format!("{body}\n\u{2014} test/log {}\n", B64.encode(&sig));
    let cp = verify_checkpoint(&text, &key);
    assert_eq!((cp.size, cp.root), (7, [9u8; 32]));
    let forged = text.replacen("\n7\n", "\n8\n", 1);
    assert!(std::panic::catch_unwind(|| verify_checkpoint(&forged, &key)).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// kla's answers, checked with the code above.

/// Checks a lineage entry and its inclusion proof without trusting kla; returns (leaf, verify body).
pub async fn check_lineage(api: &Api, tok: &str, tenant: &str, lineage: &str, key: &VKey) -> (Value, Value) {
    let e = api.get(&format!("/v1/lineage/{lineage}"), tok, tenant).await;
    assert_eq!(e.status, 200, "{}", e.body);
    let canonical = e.body["canonical"].as_str().unwrap();
    assert_eq!(
        ph(&e.body["leafHash"]),
        leaf(canonical.as_bytes()),
        "leafHash = SHA-256(0x00||canonical)"
    );
    let parsed: Value = serde_json::from_str(canonical).unwrap();
    assert_eq!(
        parsed,
        json!({"v": e.body["v"], "kind": e.body["kind"], "lineageId": lineage, "tenant": e.body["tenant"],
               "time": e.body["time"], "body": e.body["body"]})
    );
    let v = api
        .get(&format!("/v1/lineage/{lineage}/verify"), tok, tenant)
        .await;
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.body["lineageId"], lineage);
    assert_eq!(v.body["ledgerIndex"], e.body["ledgerIndex"]);
    assert_eq!(v.body["leafHash"], e.body["leafHash"]);
    let idx = v.body["ledgerIndex"].as_u64().unwrap();
    let size = v.body["treeSize"].as_u64().unwrap();
    assert!(idx < size, "{}", v.body);
    let path = hashes(&v.body["merklePath"]);
    let root = ph(&v.body["rootHash"]);
    assert_eq!(
        root_from_inclusion(idx, size, &ph(&v.body["leafHash"]), &path),
        Some(root),
        "inclusion proof recomputes the root: {}",
        v.body
    );
    match &v.body["checkpoint"] {
        Value::String(text) => {
            assert_eq!(v.body["anchored"], true);
            let cp = verify_checkpoint(text, key);
            assert_eq!(
                (cp.size, cp.root),
                (size, root),
                "proof is against the signed checkpoint"
            );
        }
        Value::Null => assert_eq!(v.body["anchored"], false),
        other => panic!("checkpoint: {other}"),
    }
    (e.body, v.body)
}

/// Checks `GET /v1/ledger/consistency` between two verified checkpoints without trusting kla: the answer names both
/// sizes and roots, and its proof verifies. Returns the proof.
pub async fn check_consistency(api: &Api, tok: &str, tenant: &str, a: &Cp, b: &Cp) -> Vec<H> {
    let r = api
        .get(
            &format!("/v1/ledger/consistency?from={}&to={}", a.size, b.size),
            tok,
            tenant,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["from"].as_u64(), r.body["to"].as_u64()),
        (Some(a.size), Some(b.size))
    );
    assert_eq!(
        ph(&r.body["fromRoot"]),
        a.root,
        "fromRoot is the first checkpoint's root"
    );
    assert_eq!(
        ph(&r.body["toRoot"]),
        b.root,
        "toRoot is the second checkpoint's root"
    );
    let proof = hashes(&r.body["proof"]);
    assert!(consistent(a.size, b.size, &a.root, &b.root, &proof), "{}", r.body);
    proof
}
