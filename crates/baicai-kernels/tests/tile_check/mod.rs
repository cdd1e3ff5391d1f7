//! The bit-for-bit check of register tiles against the dot product, shared by the test binaries
//! of the two format families (`legacy_kernels.rs`, `kquants.rs`).

use baicai_kernels::dispatch::DotFn;
use baicai_kernels::kernel::{ColsFn, PairFn, TileFns, COLS_MAX};

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

/// `cols` on every split of the weight rows `w` into two sets (the second as long as the first
/// or one shorter; each packed with `pad` bytes beyond a row) with every count of the activation
/// rows `a` up to [`COLS_MAX`] (likewise packed): every element equals `dot`'s bit for bit.
pub fn check_cols(cols: ColsFn, dot: DotFn, n: usize, w: &[Vec<u8>], a: &[Vec<u8>], label: &str) {
    let pack = |rows: &[Vec<u8>], pad: usize| {
        let stride = rows.first().map_or(0, Vec::len) + pad;
        let mut buf = vec![0xa5u8; stride * rows.len()];
        for (chunk, r) in buf.chunks_exact_mut(stride).zip(rows) {
            chunk[..r.len()].copy_from_slice(r);
        }
        (buf, stride)
    };
    let w_row = w[0].len() + 3;
    for n_rows in 1..=w.len() {
        let (first, second) = w[..n_rows].split_at(n_rows.div_ceil(2));
        let sets = [pack(first, 3).0, pack(second, 3).0];
        for n_tok in 1..=a.len().min(COLS_MAX) {
            let (ab, a_row) = pack(&a[..n_tok], 5);
            let mut o0 = vec![[f32::NAN; COLS_MAX]; first.len()];
            let mut o1 = vec![[f32::NAN; COLS_MAX]; second.len()];
            cols(
                n,
                [&sets[0], &sets[1]],
                w_row,
                &ab,
                a_row,
                n_tok,
                [&mut o0, &mut o1],
            );
            for (rows, out) in [(first, &o0), (second, &o1)] {
                for (r, row) in out.iter().enumerate() {
                    for (t, &v) in row[..n_tok].iter().enumerate() {
                        let want = dot(n, &rows[r], &a[t]);
                        assert_eq!(
                            v.to_bits(),
                            want.to_bits(),
                            "{label} cols {n_rows}×{n_tok} [{r}][{t}]: {v} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// `tiles.tile` on the first weight rows of `w` × the first activation rows of `a`, `tiles.pair`
/// (where there is one) on the first two weight rows with `a[pair_token]`, and `tiles.cols`
/// (where there is one) as [`check_cols`]: every element equals `dot`'s bit for bit.
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
    if let Some(cols) = tiles.cols {
        check_cols(cols, dot, n, w, a, label);
    }
}
