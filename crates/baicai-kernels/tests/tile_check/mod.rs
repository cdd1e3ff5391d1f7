//! The bit-for-bit check of register tiles against the dot product, shared by the test binaries
//! of the two format families (`legacy_kernels.rs`, `kquants.rs`).

use baicai_kernels::dispatch::DotFn;
use baicai_kernels::quant::legacy::{PairFn, TileFns};

/// `pair` on weight rows `w` and activation row `a`: each result equals `dot`'s bit for bit.
pub fn check_pair(pair: PairFn, dot: DotFn, n: usize, w: [&[u8]; 2], a: &[u8], label: &str) {
    for (r, &[v]) in pair(n, w, [a]).iter().enumerate() {
        let want = dot(n, w[r], a);
        assert_eq!(
            v.to_bits(),
            want.to_bits(),
            "{label} pair[{r}]: {v} vs {want}"
        );
    }
}

/// `tiles.tile` on the weight rows `w` × activation rows `a`, and `tiles.pair` (where there is
/// one) on the first two weight rows with `a[pair_token]`: every element equals `dot`'s bit for
/// bit.
pub fn check_tiles(
    tiles: TileFns,
    dot: DotFn,
    n: usize,
    w: &[Vec<u8>],
    a: &[Vec<u8>],
    pair_token: usize,
    label: &str,
) {
    let tile = (tiles.tile)(
        n,
        std::array::from_fn(|r| &w[r][..]),
        std::array::from_fn(|t| &a[t][..]),
    );
    for (r, row) in tile.iter().enumerate() {
        for (t, &v) in row.iter().enumerate() {
            let want = dot(n, &w[r], &a[t]);
            assert_eq!(
                v.to_bits(),
                want.to_bits(),
                "{label} tile[{r}][{t}]: {v} vs {want}"
            );
        }
    }
    if let Some(pair) = tiles.pair {
        check_pair(pair, dot, n, [&w[0], &w[1]], &a[pair_token], label);
    }
}
