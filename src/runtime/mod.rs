//! The thread-per-core engine: one pinned thread, ring and listener per core (issue 5). The only
//! module with syscalls and `unsafe`.
#![allow(unsafe_code)]
