//! The black-box tests of sessiongate, one binary (`cargo test --test it`), one module per
//! capability. Every module runs the real `sessiongate` binary on loopback through the
//! harness in `common`; a module's tests are sentences of the contract in SPEC.md.
//!
//! Run one capability with `cargo test --test it core::` (or `deny::`, `websocket::`, …).

mod common;

mod banner;
mod browser;
mod cli;
mod connections;
mod core;
mod deny;
mod end;
mod framing;
mod jwks;
mod liveness;
mod ops;
mod properties;
mod scale;
mod security;
mod sites;
mod tls;
mod websocket;
