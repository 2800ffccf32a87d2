//! Start-up recovery's decision table (pure). For an open intent that commits as transaction
//! `N`, and the pool's transaction id `T`:
//!
//! | op     | T == N                | T == N - 1                                   | otherwise |
//! |--------|-----------------------|----------------------------------------------|-----------|
//! | create | roll forward (record) | roll back (`delete` the new id, tolerate ENODATA) | conflict  |
//! | delete | roll forward (record) | redo (`delete`, tolerate ENODATA; set tid; record) | conflict  |
//!
//! A delete is carried through rather than undone: its message cannot be reversed, and the
//! caller asked for it. A conflict means something else changed the pool; we refuse to serve.

use crate::store::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The pool change committed; finish the record change.
    RollForward,
    /// The pool change did not commit; undo the message and drop the intent.
    RollBack,
    /// Send the delete again, commit it, finish the record change.
    Redo,
    /// The pool's transaction id is neither N nor N-1.
    Conflict,
}

pub fn decide(op: Op, pool_tid: u64, intent_tid: u64) -> Action {
    if pool_tid == intent_tid {
        return Action::RollForward;
    }
    if pool_tid.checked_add(1) == Some(intent_tid) {
        return match op {
            Op::Create => Action::RollBack,
            Op::Delete => Action::Redo,
        };
    }
    Action::Conflict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_table() {
        let table = [
            (Op::Create, 5, 5, Action::RollForward),
            (Op::Create, 4, 5, Action::RollBack),
            (Op::Create, 3, 5, Action::Conflict),
            (Op::Create, 6, 5, Action::Conflict),
            (Op::Delete, 5, 5, Action::RollForward),
            (Op::Delete, 4, 5, Action::Redo),
            (Op::Delete, 3, 5, Action::Conflict),
            (Op::Delete, 6, 5, Action::Conflict),
            (Op::Create, u64::MAX, 0, Action::Conflict),
            (Op::Create, 0, 1, Action::RollBack),
        ];
        for (op, pool, intent, want) in table {
            assert_eq!(decide(op, pool, intent), want, "{op:?} pool={pool} intent={intent}");
        }
    }
}
