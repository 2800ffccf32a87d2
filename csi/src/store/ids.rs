//! Thin id allocation: the next free id at or after a cursor, wrapping within dm-thin's 24-bit
//! range, skipping ids still in use. An id is in use from the moment its create intent is written
//! until its delete has committed, so it is never reused early.

use crate::units::{ThinId, MAX_THIN_ID};

/// The first id handed out (0 is left alone; some tools treat it specially).
pub const FIRST_ID: u32 = 1;

/// The first id at or after `cursor` for which `in_use` is false, or `None` when all are used.
pub fn allocate(cursor: u32, mut in_use: impl FnMut(u32) -> bool) -> Option<ThinId> {
    let start = if (FIRST_ID..=MAX_THIN_ID).contains(&cursor) { cursor } else { FIRST_ID };
    let candidates = (start..=MAX_THIN_ID).chain(FIRST_ID..start);
    for id in candidates {
        if !in_use(id) {
            return ThinId::new(id).ok();
        }
    }
    None
}

/// The cursor after handing out `id`.
pub fn next_cursor(id: ThinId) -> u32 {
    if id.get() >= MAX_THIN_ID {
        FIRST_ID
    } else {
        id.get() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hands_out_ids_in_order_skipping_used_ones() {
        let used: HashSet<u32> = [1, 2, 4].into();
        assert_eq!(allocate(1, |i| used.contains(&i)).map(ThinId::get), Some(3));
        assert_eq!(allocate(4, |i| used.contains(&i)).map(ThinId::get), Some(5));
        assert_eq!(allocate(0, |_| false).map(ThinId::get), Some(1));
    }

    #[test]
    fn wraps_at_24_bits_and_reports_exhaustion() {
        assert_eq!(next_cursor(ThinId::new(MAX_THIN_ID).unwrap()), FIRST_ID);
        assert_eq!(allocate(MAX_THIN_ID, |i| i == MAX_THIN_ID).map(ThinId::get), Some(1));
        assert_eq!(allocate(MAX_THIN_ID + 5, |_| false).map(ThinId::get), Some(1));
        let mut probes = 0u32;
        assert_eq!(
            allocate(7, |_| {
                probes += 1;
                true
            }),
            None
        );
        assert_eq!(probes, MAX_THIN_ID);
    }

    #[test]
    fn a_freed_id_comes_back_only_after_the_cursor_wraps() {
        let mut used: HashSet<u32> = HashSet::new();
        let mut cursor = FIRST_ID;
        let a = allocate(cursor, |i| used.contains(&i)).unwrap();
        used.insert(a.get());
        cursor = next_cursor(a);
        used.remove(&a.get()); // deleted and committed
        let b = allocate(cursor, |i| used.contains(&i)).unwrap();
        assert_ne!(a, b);
    }
}
