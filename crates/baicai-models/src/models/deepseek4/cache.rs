//! DeepSeek-V4's cache row, per token and layer: the window key, the compressed entry (and the
//! indexer's entry) the token closes, and the compressors' raw projections a later window still
//! pools. A step writes its tokens' rows, closing the windows its tokens end.

use half::slice::HalfFloatSliceExt;

use super::attention::Projected;
use super::{Deepseek4, V4Config};
use crate::decoder::Seg;
use crate::kv::KvCache;

/// Offsets of a cache row (per token and layer): the window key, the compressed entry and the
/// indexer's entry this token closes, the compressor's and the indexer's raw projections.
#[derive(Clone, Copy)]
pub(super) struct RowLayout {
    pub(super) kv: usize,
    pub(super) entry: usize,
    pub(super) ientry: usize,
    pub(super) raw: usize,
    pub(super) iraw: usize,
    pub(super) width: usize,
}

impl RowLayout {
    /// The row for `v`'s head widths; the raw parts have room for CSA's overlapping (`2w`)
    /// projections.
    pub(super) fn new(v: &V4Config) -> RowLayout {
        let (d, c) = (v.head_dim, v.index.head_dim);
        let kv = 0;
        let entry = d;
        let ientry = entry + d;
        let raw = ientry + c;
        let iraw = raw + 4 * d; // kv and gate of 2d each (CSA; HCA uses half)
        RowLayout {
            kv,
            entry,
            ientry,
            raw,
            iraw,
            width: iraw + 4 * c,
        }
    }
}

/// Rounds values to f16 precision in place.
fn round_f16(x: &mut [f32]) {
    x.iter_mut()
        .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
}

/// A sequence's cache rows of one layer, `[positions, row width]`, read part by part (an f16
/// cache converts only what is read).
#[derive(Clone, Copy)]
pub(super) enum Rows<'a> {
    /// The rows and the row width.
    F32(&'a [f32], usize),
    /// The rows and the row width, converted as read.
    F16(&'a [half::f16], usize),
}

impl<'a> Rows<'a> {
    pub(super) fn of(cache: &'a KvCache, il: usize, end: usize, width: usize) -> Rows<'a> {
        match cache.is_f16() {
            true => Rows::F16(cache.layer_f16(il, end).0, width),
            false => Rows::F32(cache.layer(il, end).0, width),
        }
    }

    /// Values `off..off + out.len()` of row `pos` into `out`.
    pub(super) fn read_into(&self, pos: usize, off: usize, out: &mut [f32]) {
        match *self {
            Rows::F32(r, w) => out.copy_from_slice(&r[pos * w + off..pos * w + off + out.len()]),
            Rows::F16(r, w) => {
                r[pos * w + off..pos * w + off + out.len()].convert_to_f32_slice(out)
            }
        }
    }
}

impl Deepseek4 {
    /// Writes this step's rows of sequence `seg` into layer `il`'s cache: each token's window key
    /// and raw compressor projections, and, at a token that closes a window, its entries.
    pub(super) fn store_step(&self, il: usize, seg: &mut Seg, p: &Projected) {
        let lay = RowLayout::new(&self.v4);
        let hd = self.v4.head_dim;
        let (pw, ipw) = (p.pw, p.ipw);
        let mut new = vec![0.0; seg.len() * lay.width]; // [len, width]
        for (t, row) in seg.rows.clone().zip(new.chunks_exact_mut(lay.width)) {
            row[lay.kv..lay.kv + hd].copy_from_slice(&p.kv[t * hd..(t + 1) * hd]);
            row[lay.raw..lay.raw + pw].copy_from_slice(&p.ck[t * pw..(t + 1) * pw]);
            row[lay.raw + pw..lay.raw + 2 * pw].copy_from_slice(&p.cg[t * pw..(t + 1) * pw]);
            row[lay.iraw..lay.iraw + ipw].copy_from_slice(&p.ik[t * ipw..(t + 1) * ipw]);
            row[lay.iraw + ipw..lay.iraw + 2 * ipw].copy_from_slice(&p.ig[t * ipw..(t + 1) * ipw]);
        }
        // An f16 cache: this step's rows are used as the cache will return them, so a token's
        // result does not depend on which step wrote the rows it reads.
        let half = seg.cache.is_f16();
        if half {
            round_f16(&mut new);
        }
        if self.layers[il].attn.comp.is_some() {
            let old = Rows::of(seg.cache, il, seg.pos0, lay.width);
            self.close_entries(il, old, seg.pos0, &mut new, p);
            if half {
                round_f16(&mut new);
            }
        }
        seg.cache.store(il, &new, &[]);
    }

    /// The compressed entries (and indexer entries) of the windows this step's tokens close, into
    /// `new` (`[len, width]`, this step's rows from position `p0`), pooled from the raw
    /// projections in `old` (the cache before `p0`) and `new`.
    fn close_entries(&self, il: usize, old: Rows, p0: usize, new: &mut [f32], p: &Projected) {
        let (c, v) = (&self.cfg, &self.v4);
        let a = &self.layers[il].attn;
        let Some(cp) = &a.comp else { return };
        let ix = a.indexer.as_ref();
        let lay = RowLayout::new(v);
        let (hd, ic, r, m) = (v.head_dim, v.index.head_dim, v.rope_dim, v.kinds[il].1);
        // Token `pos`'s values `off..off + len` of its row, from the cache or this step.
        let part = |pos: usize, off: usize, len: usize| -> Vec<f32> {
            if pos < p0 {
                let mut v = vec![0.0; len];
                old.read_into(pos, off, &mut v);
                v
            } else {
                let r0 = (pos - p0) * lay.width + off;
                new[r0..r0 + len].to_vec()
            }
        };
        let mut entries = Vec::new();
        for i in 0..new.len() / lay.width {
            let pos = p0 + i;
            if !(pos + 1).is_multiple_of(m) {
                continue;
            }
            let w = (pos + 1) / m - 1;
            let raw = |pos| part(pos, lay.raw, 2 * p.pw);
            let e = cp.entry(w, m, raw, c.rms_eps, &self.rope_compress, r); // [head_dim]
            let ie = ix.map(|x| {
                let raw = |pos| part(pos, lay.iraw, 2 * p.ipw);
                x.comp.entry(w, m, raw, c.rms_eps, &self.rope_compress, r) // [index_head_dim]
            });
            entries.push((i, e, ie));
        }
        for (i, e, ie) in entries {
            let row = &mut new[i * lay.width..(i + 1) * lay.width]; // [width]
            row[lay.entry..lay.entry + hd].copy_from_slice(&e);
            if let Some(ie) = ie {
                row[lay.ientry..lay.ientry + ic].copy_from_slice(&ie);
            }
        }
    }
}
