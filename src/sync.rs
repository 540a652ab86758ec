//! The one poison-tolerant lock helper. Every mutex in the proxy guards data that a panic
//! cannot leave half-written (a queue push, a swap, a counter), so a poisoned lock is used as is
//! rather than taking the whole process down with it.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
