//! Supervised processes (placeholder doc, rewritten below).

pub mod config;
pub mod graph;
