//! What the tracker's growing structures take in memory, so that an embedder's memory limit
//! becomes a refused connection instead of a guest that runs out of memory and traps.
//!
//! The figures are computed from capacities and element sizes, not measured from the allocator:
//! every element involved holds no pointer, so the native engine and the component compute the
//! same figures and refuse at the same point. Growth is charged at the size of the new
//! allocation, since while a vector or a table grows, the old and the new buffer both exist.

use core::mem::size_of;

// The figures must be the same natively and in the guest, so the sizes they use are checked at
// compile time for both (the guest is compiled by host/build.rs): a field that changes them on
// one target only is a build error, not a silent divergence.
const _: () = {
    assert!(size_of::<super::table::Entry>() == 240);
    assert!(size_of::<super::ecache::Pending>() == 32);
    assert!(size_of::<((u16, crate::tuple::Tuple), (u32, crate::tuple::Direction))>() == 52);
};

/// The smallest capacity std gives a vector that grows from empty (for elements up to 1 KiB).
const MIN_VEC_CAPACITY: usize = 4;

/// Bytes of a vector's buffer with room for `capacity` elements of `T`.
pub(super) fn vec_bytes<T>(capacity: usize) -> u64 {
    (capacity * size_of::<T>()) as u64
}

/// The buffer a vector of `len` elements in `capacity` allocates to take `extra` more: nothing
/// when they fit, else std's amortized growth (double, or what is needed).
pub(super) fn vec_growth<T>(len: usize, capacity: usize, extra: usize) -> u64 {
    let needed = len.saturating_add(extra);
    if needed <= capacity {
        return 0;
    }
    vec_bytes::<T>(needed.max(capacity.saturating_mul(2)).max(MIN_VEC_CAPACITY))
}

/// Buckets of a hash table that can hold `items` (hashbrown keeps it at most 7/8 full, in a
/// power of two of buckets).
fn buckets_for(items: usize) -> usize {
    match items {
        0 => 0,
        1..4 => 4,
        4..8 => 8,
        _ => (items.saturating_mul(8) / 7).next_power_of_two(),
    }
}

/// Bytes of a hash table of `(K, V)` whose `capacity()` is `capacity`: each bucket holds an
/// element and a control byte.
pub(super) fn map_bytes<K, V>(capacity: usize) -> u64 {
    (buckets_for(capacity) * (size_of::<(K, V)>() + 1)) as u64
}

/// The table a hash map of `len` items in `capacity` allocates to take `extra` more.
pub(super) fn map_growth<K, V>(len: usize, capacity: usize, extra: usize) -> u64 {
    let needed = len.saturating_add(extra);
    if needed <= capacity {
        return 0;
    }
    map_bytes::<K, V>(needed.max(capacity + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn vector_growth_follows_std() {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..1000u64 {
            let (len, cap) = (v.len(), v.capacity());
            let predicted = vec_growth::<u64>(len, cap, 1);
            v.push(i);
            if predicted == 0 {
                assert_eq!(v.capacity(), cap);
            } else {
                assert_eq!(vec_bytes::<u64>(v.capacity()), predicted, "at {len}");
            }
        }
    }

    #[test]
    fn table_growth_follows_std() {
        let mut m: HashMap<u32, u32> = HashMap::new();
        for i in 0..5000u32 {
            let (len, cap) = (m.len(), m.capacity());
            let predicted = map_growth::<u32, u32>(len, cap, 1);
            m.insert(i, i);
            if predicted == 0 {
                assert_eq!(m.capacity(), cap, "at {len}");
            } else {
                assert_eq!(map_bytes::<u32, u32>(m.capacity()), predicted, "at {len}");
            }
        }
    }
}
