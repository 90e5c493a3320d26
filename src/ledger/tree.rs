//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and strict proof verification.
//!
//! Pure code: no IO. Proof generation reads complete-subtree hashes through the
//! [`NodeSource`] trait, so the durable log and the in-memory [`MemTree`] share it.
//! A node is addressed by `(level, index)`: it covers leaves
//! `[index << level, (index + 1) << level)`; level 0 holds leaf hashes.

use sha2::{Digest, Sha256};

use super::LedgerError;

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`: the RFC 6962 leaf hash.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the RFC 6962 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    Sha256::digest(buf).into()
}

/// `SHA-256("")`: the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Supplies stored hashes of complete subtrees.
pub trait NodeSource {
    /// Number of leaves the source can serve nodes for.
    fn size(&self) -> u64;
    /// Hash of the complete subtree at `level`, `index` (must lie within `size()`).
    fn node(&self, level: u32, index: u64) -> Result<Hash, LedgerError>;
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) for a non-empty range reached by the RFC recursion.
fn mth<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, LedgerError> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.node(n.trailing_zeros(), start >> n.trailing_zeros());
    }
    let k = split_point(n);
    let left = mth(src, start, start + k)?;
    let right = mth(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// Root hash of the first `size` leaves of `src`.
pub fn root<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, LedgerError> {
    if size > src.size() {
        return Err(LedgerError::InvalidRange(format!(
            "tree size {size} exceeds log size {}",
            src.size()
        )));
    }
    if size == 0 {
        return Ok(empty_root());
    }
    mth(src, 0, size)
}

/// RFC 9162 s2.1.3.1 inclusion proof (audit path) for leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, LedgerError> {
    if size > src.size() {
        return Err(LedgerError::InvalidRange(format!(
            "tree size {size} exceeds log size {}",
            src.size()
        )));
    }
    if index >= size {
        return Err(LedgerError::InvalidRange(format!(
            "leaf index {index} is not below tree size {size}"
        )));
    }
    let mut out = Vec::with_capacity(64);
    let (mut start, mut end, mut m) = (0u64, size, index);
    // Walk down from the root, collecting siblings root-side first, then reverse.
    while end - start > 1 {
        let k = split_point(end - start);
        if m < k {
            out.push(mth(src, start + k, end)?);
            end = start + k;
        } else {
            out.push(mth(src, start, start + k)?);
            start += k;
            m -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// RFC 9162 s2.1.4.1 consistency proof between tree sizes `from` and `to`.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, LedgerError> {
    if to > src.size() {
        return Err(LedgerError::InvalidRange(format!(
            "tree size {to} exceeds log size {}",
            src.size()
        )));
    }
    if from == 0 || from > to {
        return Err(LedgerError::InvalidRange(format!(
            "consistency needs 0 < from <= to, got from={from} to={to}"
        )));
    }
    let mut out = Vec::with_capacity(64);
    let (mut start, end, mut m, mut known) = (0u64, to, from, true);
    let mut end = end;
    loop {
        let n = end - start;
        if m == n {
            if !known {
                out.push(mth(src, start, end)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push(mth(src, start + k, end)?);
            end = start + k;
        } else {
            out.push(mth(src, start, start + k)?);
            start += k;
            m -= k;
            known = false;
        }
    }
    out.reverse();
    Ok(out)
}

fn bad(msg: &str) -> LedgerError {
    LedgerError::InvalidProof(msg.to_owned())
}

/// Strict RFC 9162 s2.1.3.2 inclusion verification: any extra, missing or altered hash,
/// or an index outside the tree, is rejected.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LedgerError> {
    let got = root_from_inclusion(index, size, leaf, proof)?;
    if &got != root {
        return Err(bad("inclusion proof does not lead to the root"));
    }
    Ok(())
}

/// Recomputes the root implied by an inclusion proof (strict about its shape).
fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Result<Hash, LedgerError> {
    if index >= size {
        return Err(bad("leaf index is not below tree size"));
    }
    let (mut fnn, mut snn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snn == 0 {
            return Err(bad("inclusion proof is too long"));
        }
        if fnn & 1 == 1 || fnn == snn {
            r = node_hash(p, &r);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                snn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    if snn != 0 {
        return Err(bad("inclusion proof is too short"));
    }
    Ok(r)
}

/// Strict RFC 9162 s2.1.4.2 consistency verification between `(size1, root1)` and
/// `(size2, root2)`. A consistency proof from the empty tree is rejected as meaningless.
/// Roots are byte strings so that equal-size checks compare exactly what was given.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[Hash],
) -> Result<(), LedgerError> {
    if size1 == 0 {
        return Err(bad("consistency with the empty tree is meaningless"));
    }
    if size2 < size1 {
        return Err(bad("size1 is greater than size2"));
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(bad("proof must be empty for equal sizes"));
        }
        if root1 != root2 {
            return Err(bad("roots differ for equal sizes"));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(bad("empty consistency proof"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(as_hash(root1)?);
    }
    path.extend_from_slice(proof);
    let (mut fnn, mut snn) = (size1 - 1, size2 - 1);
    while fnn & 1 == 1 {
        fnn >>= 1;
        snn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snn == 0 {
            return Err(bad("consistency proof is too long"));
        }
        if fnn & 1 == 1 || fnn == snn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                snn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    if snn != 0 {
        return Err(bad("consistency proof is too short"));
    }
    if fr.as_slice() != root1 {
        return Err(bad("consistency proof does not match root1"));
    }
    if sr.as_slice() != root2 {
        return Err(bad("consistency proof does not match root2"));
    }
    Ok(())
}

fn as_hash(b: &[u8]) -> Result<Hash, LedgerError> {
    b.try_into().map_err(|_| bad("hash must be 32 bytes"))
}

/// Whether `[start, end)` is a valid subtree (draft-ietf-plants-merkle-tree-certs s4.1):
/// `start < end` and `start` is a multiple of BIT_CEIL(end - start).
pub fn is_valid_subtree(start: u64, end: u64) -> bool {
    if end <= start {
        return false;
    }
    if start == 0 {
        return true;
    }
    match (end - start).checked_next_power_of_two() {
        Some(c) => start.is_multiple_of(c),
        None => false,
    }
}

/// Strict subtree inclusion verification (draft-ietf-plants-merkle-tree-certs s4.3.2):
/// leaf `index` lies in subtree `[start, end)` whose hash is `subtree_root`.
pub fn verify_subtree_inclusion(
    index: u64,
    start: u64,
    end: u64,
    leaf: &Hash,
    proof: &[Hash],
    subtree_root: &Hash,
) -> Result<(), LedgerError> {
    if !is_valid_subtree(start, end) || index < start || index >= end {
        return Err(bad("invalid subtree or index outside it"));
    }
    verify_inclusion(index - start, end - start, leaf, proof, subtree_root)
}

/// Strict subtree consistency verification (draft-ietf-plants-merkle-tree-certs s4.4.3):
/// subtree `[start, end)` with hash `subtree_root` is part of the tree of `size` with
/// `root`. The empty subtree (`start == end`) is in every tree, with an empty proof and
/// the empty-tree hash as its root.
pub fn verify_subtree_consistency(
    start: u64,
    end: u64,
    size: u64,
    subtree_root: &[u8],
    root: &[u8],
    proof: &[Hash],
) -> Result<(), LedgerError> {
    if start == end && end <= size {
        if !proof.is_empty() {
            return Err(bad("proof for the empty subtree must be empty"));
        }
        if subtree_root != empty_root().as_slice() {
            return Err(bad("empty subtree must have the empty-tree hash"));
        }
        return Ok(());
    }
    if !is_valid_subtree(start, end) || end > size {
        return Err(bad("invalid subtree for this tree size"));
    }
    let (mut fnn, mut snn, mut tnn) = (start, end - 1, size - 1);
    if snn == tnn {
        while fnn != snn {
            fnn >>= 1;
            snn >>= 1;
            tnn >>= 1;
        }
    } else {
        while fnn != snn && snn & 1 == 1 {
            fnn >>= 1;
            snn >>= 1;
            tnn >>= 1;
        }
    }
    let (mut fr, mut sr, rest) = if fnn == snn {
        if proof.is_empty() {
            // Nothing to combine: the subtree must be the whole tree.
            if tnn != 0 || subtree_root != root {
                return Err(bad("subtree consistency proof does not match the hashes"));
            }
            return Ok(());
        }
        let h = as_hash(subtree_root)?;
        (h, h, proof)
    } else {
        let Some((first, rest)) = proof.split_first() else {
            return Err(bad("empty subtree consistency proof"));
        };
        (*first, *first, rest)
    };
    for c in rest {
        if tnn == 0 {
            return Err(bad("subtree consistency proof is too long"));
        }
        if snn & 1 == 1 || snn == tnn {
            if fnn < snn {
                fr = node_hash(c, &fr);
            }
            sr = node_hash(c, &sr);
            while snn & 1 == 0 {
                fnn >>= 1;
                snn >>= 1;
                tnn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnn >>= 1;
        snn >>= 1;
        tnn >>= 1;
    }
    if tnn != 0 {
        return Err(bad("subtree consistency proof is too short"));
    }
    if fr.as_slice() != subtree_root || sr.as_slice() != root {
        return Err(bad("subtree consistency proof does not match the hashes"));
    }
    Ok(())
}

/// The complete-subtree positions `(level, index)` whose hashes make up the right
/// frontier of a tree of `size` leaves, highest level first.
pub fn frontier_positions(size: u64) -> Vec<(u32, u64)> {
    (0..64u32)
        .rev()
        .filter(|l| size >> l & 1 == 1)
        .map(|l| (l, (size >> l) - 1))
        .collect()
}

/// The O(log n) right frontier of an append-only tree: enough to append leaves,
/// emit every newly completed node, and compute the current root.
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    size: u64,
    /// Hashes at [`frontier_positions`]`(size)`, highest level first.
    nodes: Vec<Hash>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the frontier of `size` from its nodes (as listed by [`frontier_positions`]).
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Result<Self, LedgerError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(LedgerError::InvalidRange(format!(
                "frontier of size {size} needs {} nodes, got {}",
                size.count_ones(),
                nodes.len()
            )));
        }
        Ok(Self { size, nodes })
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `emit(level, index, hash)` is called for the leaf and for
    /// every complete subtree the append finishes, lowest level first.
    pub fn push(&mut self, leaf: Hash, mut emit: impl FnMut(u32, u64, &Hash)) {
        emit(0, self.size, &leaf);
        let mut h = leaf;
        let mut idx = self.size;
        let mut level = 0u32;
        while idx & 1 == 1 {
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(&left, &h);
            level += 1;
            idx >>= 1;
            emit(level, idx, &h);
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// Root hash of the current tree.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(first) = it.next() else {
            return empty_root();
        };
        it.fold(*first, |acc, left| node_hash(left, &acc))
    }
}

/// An in-memory tree keeping every complete-subtree hash; used for tests and tooling.
#[derive(Clone, Debug, Default)]
pub struct MemTree {
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry (hashed as a leaf); returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// Appends an already hashed leaf; returns its index.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.frontier.size();
        let levels = &mut self.levels;
        self.frontier.push(leaf, |level, _idx, h| {
            let l = level as usize;
            if levels.len() <= l {
                levels.push(Vec::new());
            }
            levels[l].push(*h);
        });
        index
    }

    /// Current root hash.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl NodeSource for MemTree {
    fn size(&self) -> u64 {
        self.frontier.size()
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        self.levels
            .get(level as usize)
            .and_then(|l| usize::try_from(index).ok().and_then(|i| l.get(i)))
            .copied()
            .ok_or_else(|| LedgerError::NotFound(format!("node level {level} index {index}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
