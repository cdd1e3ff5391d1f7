//! The key/value cache of one sequence.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::MmapMut;

use crate::error::ModelError;

/// Values whose all-zero bit pattern is a valid zero value.
trait Zeroable: Copy {}
impl Zeroable for f32 {}
impl Zeroable for f16 {}

/// A zero-initialised buffer in its own anonymous memory mapping: the OS commits pages only as
/// they are written, and the whole buffer goes back to the OS when it is dropped (a server's
/// memory returns to its baseline after a burst of long sequences, whatever the allocator keeps).
/// Falls back to a heap vector where the mapping cannot be made.
struct ZeroBuf<T: Zeroable> {
    map: Option<MmapMut>,
    vec: Vec<T>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Zeroable> ZeroBuf<T> {
    fn new(len: usize, zero: T) -> ZeroBuf<T> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        let map = (bytes > 0).then(|| MmapMut::map_anon(bytes).ok()).flatten();
        let vec = if map.is_some() {
            Vec::new()
        } else {
            // A size no mapping can hold must not reach the allocator's abort: panic with the
            // size instead (the serving engine turns a panic into an error for its requests).
            let mut v = Vec::new();
            if v.try_reserve_exact(len).is_err() {
                panic!("cannot allocate {bytes} bytes of KV cache");
            }
            v.resize(len, zero);
            v
        };
        ZeroBuf {
            map,
            vec,
            len,
            _t: PhantomData,
        }
    }
}

impl<T: Zeroable> Deref for ZeroBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.map {
            // SAFETY: the mapping is page-aligned (so aligned for `T`), holds `len * size_of::<T>()`
            // bytes, starts zeroed (a valid `T` for `Zeroable` types) and lives as long as `self`.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<T>(), self.len) },
            None => &self.vec,
        }
    }
}

impl<T: Zeroable> DerefMut for ZeroBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: as in `deref`, and the borrow of `self` is exclusive.
            Some(m) => unsafe {
                std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<T>(), self.len)
            },
            None => &mut self.vec,
        }
    }
}

/// Keys and values of every layer for up to `capacity` positions, `[pos, n_head_kv * dim]` per
/// layer, stored as f32 ([`KvCache::new`]) or f16 ([`KvCache::new_f16`], llama.cpp's default cache
/// type: half the memory and half the bytes attention reads per token). Each layer's keys and
/// values are an anonymous memory mapping, so the OS commits pages only as the cache fills and
/// takes them back when the cache is dropped.
pub struct KvCache {
    k: Vec<ZeroBuf<f32>>,
    v: Vec<ZeroBuf<f32>>,
    /// The f16 storage; empty when the cache is f32.
    k16: Vec<ZeroBuf<f16>>,
    v16: Vec<ZeroBuf<f16>>,
    k_width: usize,
    v_width: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for `n_layer` layers and `capacity` positions.
    ///
    /// # Panics
    /// When the memory cannot even be reserved (a capacity far beyond any context).
    pub fn new(n_layer: usize, capacity: usize, k_width: usize, v_width: usize) -> KvCache {
        KvCache {
            k: (0..n_layer)
                .map(|_| ZeroBuf::new(capacity.saturating_mul(k_width), 0.0))
                .collect(),
            v: (0..n_layer)
                .map(|_| ZeroBuf::new(capacity.saturating_mul(v_width), 0.0))
                .collect(),
            k16: Vec::new(),
            v16: Vec::new(),
            k_width,
            v_width,
            len: 0,
            capacity,
        }
    }

    /// A cache for `n_layer` layers and `capacity` positions that stores f16 (values are rounded
    /// to nearest even when stored).
    ///
    /// # Panics
    /// As [`KvCache::new`].
    pub fn new_f16(n_layer: usize, capacity: usize, k_width: usize, v_width: usize) -> KvCache {
        KvCache {
            k: Vec::new(),
            v: Vec::new(),
            k16: (0..n_layer)
                .map(|_| ZeroBuf::new(capacity.saturating_mul(k_width), f16::ZERO))
                .collect(),
            v16: (0..n_layer)
                .map(|_| ZeroBuf::new(capacity.saturating_mul(v_width), f16::ZERO))
                .collect(),
            k_width,
            v_width,
            len: 0,
            capacity,
        }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (to reuse a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes per position over all layers.
    pub fn bytes_per_token(&self) -> usize {
        let (n_layer, size) = if self.is_f16() {
            (self.k16.len(), 2)
        } else {
            (self.k.len(), 4)
        };
        n_layer * (self.k_width + self.v_width) * size
    }

    /// Whether keys and values are stored as f16.
    pub fn is_f16(&self) -> bool {
        !self.k16.is_empty()
    }

    /// Checks that `n` more positions fit.
    ///
    /// # Errors
    /// [`ModelError::ContextFull`] otherwise.
    pub fn reserve(&self, n: usize) -> Result<(), ModelError> {
        if self.len + n > self.capacity {
            return Err(ModelError::ContextFull {
                needed: self.len + n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Writes keys `[n, k_width]` and values `[n, v_width]` of layer `il` at positions
    /// `len..len + n` (the length advances with [`KvCache::advance`]).
    pub fn store(&mut self, il: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.k_width;
        let p = self.len;
        let (kr, vr) = (
            p * self.k_width..(p + n) * self.k_width,
            p * self.v_width..(p + n) * self.v_width,
        );
        if self.is_f16() {
            self.k16[il][kr].convert_from_f32_slice(k);
            self.v16[il][vr].convert_from_f32_slice(v);
        } else {
            self.k[il][kr].copy_from_slice(k);
            self.v[il][vr].copy_from_slice(v);
        }
    }

    /// Keys and values of layer `il` for positions `0..end` of an f32 cache.
    ///
    /// # Panics
    /// If the cache stores f16 (use [`KvCache::layer_f16`]).
    pub fn layer(&self, il: usize, end: usize) -> (&[f32], &[f32]) {
        assert!(!self.is_f16(), "f16 KV cache read as f32");
        (
            &self.k[il][..end * self.k_width],
            &self.v[il][..end * self.v_width],
        )
    }

    /// Keys and values of layer `il` for positions `0..end` of an f16 cache.
    ///
    /// # Panics
    /// If the cache stores f32 (use [`KvCache::layer`]).
    pub fn layer_f16(&self, il: usize, end: usize) -> (&[f16], &[f16]) {
        assert!(self.is_f16(), "f32 KV cache read as f16");
        (
            &self.k16[il][..end * self.k_width],
            &self.v16[il][..end * self.v_width],
        )
    }

    /// Makes this cache hold the first `n` positions of `src` (the same layout: layers, widths
    /// and precision), replacing what it held: a shared prompt prefix reused without recomputing
    /// it.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the layouts differ, [`ModelError::ContextFull`] when `n`
    /// exceeds `src`'s filled positions or this cache's capacity.
    pub fn copy_prefix(&mut self, src: &KvCache, n: usize) -> Result<(), ModelError> {
        if (
            self.k_width,
            self.v_width,
            self.is_f16(),
            self.k.len() + self.k16.len(),
        ) != (
            src.k_width,
            src.v_width,
            src.is_f16(),
            src.k.len() + src.k16.len(),
        ) {
            return Err(ModelError::Config(
                "cannot copy between KV caches of different layouts".into(),
            ));
        }
        if n > src.len || n > self.capacity {
            return Err(ModelError::ContextFull {
                needed: n,
                capacity: src.len.min(self.capacity),
            });
        }
        let (kn, vn) = (n * self.k_width, n * self.v_width);
        for (d, s) in self.k.iter_mut().zip(&src.k) {
            d[..kn].copy_from_slice(&s[..kn]);
        }
        for (d, s) in self.v.iter_mut().zip(&src.v) {
            d[..vn].copy_from_slice(&s[..vn]);
        }
        for (d, s) in self.k16.iter_mut().zip(&src.k16) {
            d[..kn].copy_from_slice(&s[..kn]);
        }
        for (d, s) in self.v16.iter_mut().zip(&src.v16) {
            d[..vn].copy_from_slice(&s[..vn]);
        }
        self.len = n;
        Ok(())
    }

    /// Marks `n` more positions as filled (after every layer stored them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
