//! The memory allocator of every binary that links this crate: jemalloc, in place of the C
//! library's `malloc`.
//!
//! A server holds many idle WebSocket connections, each a handful of small blocks that
//! live as long as the connection, allocated by whichever worker thread ran its set-up,
//! among the short-lived blocks of the requests, the database driver and the broker
//! client. glibc's `malloc` keeps per-thread arenas and reuses freed space only where it
//! fits, so those long-lived blocks end up scattered among free space it cannot give back;
//! jemalloc's size classes pack blocks of one size together, which keeps the resident
//! memory per connection lower (figures in BENCHMARKS.md).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
