//! Integration tests of the `outpost` binary crate: repository-wide rules (tidy) and the
//! embedded default configuration's promises.

mod defaults;
mod tidy;
