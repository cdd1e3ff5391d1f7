//! The key/value cache of one sequence.

use crate::error::ModelError;

/// Keys and values of every layer for up to `capacity` positions, f32, `[pos, n_head_kv * dim]`
/// per layer. Allocated zeroed, so the OS commits pages only as the cache fills.
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    k_width: usize,
    v_width: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for `n_layer` layers and `capacity` positions.
    pub fn new(n_layer: usize, capacity: usize, k_width: usize, v_width: usize) -> KvCache {
        KvCache {
            k: (0..n_layer).map(|_| vec![0.0; capacity * k_width]).collect(),
            v: (0..n_layer).map(|_| vec![0.0; capacity * v_width]).collect(),
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
        self.k.len() * (self.k_width + self.v_width) * std::mem::size_of::<f32>()
    }

    /// Checks that `n` more positions fit.
    ///
    /// # Errors
    /// [`ModelError::ContextFull`] otherwise.
    pub fn reserve(&self, n: usize) -> Result<(), ModelError> {
        if self.len + n > self.capacity {
            return Err(ModelError::ContextFull { needed: self.len + n, capacity: self.capacity });
        }
        Ok(())
    }

    /// Writes keys `[n, k_width]` and values `[n, v_width]` of layer `il` at positions
    /// `len..len + n` (the length advances with [`KvCache::advance`]).
    pub fn store(&mut self, il: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.k_width;
        let p = self.len;
        self.k[il][p * self.k_width..(p + n) * self.k_width].copy_from_slice(k);
        self.v[il][p * self.v_width..(p + n) * self.v_width].copy_from_slice(v);
    }

    /// Keys and values of layer `il` for positions `0..end`.
    pub fn layer(&self, il: usize, end: usize) -> (&[f32], &[f32]) {
        (&self.k[il][..end * self.k_width], &self.v[il][..end * self.v_width])
    }

    /// Marks `n` more positions as filled (after every layer stored them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
