//! `na-cli` commands.
pub mod loaded;
