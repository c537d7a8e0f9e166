//! The pieces of `yrelay-bench`: a y-websocket load generator (`load`, `idle`, `join-storm`)
//! and the null relay baseline. The binary (`src/main.rs`) is the command line over these.

pub mod client;
pub mod idle;
pub mod load;
pub mod null_relay;
pub mod proto;
pub mod stats;
pub mod storm;

use std::io::Write as _;

/// Writes a line to stderr (tables and progress; stdout carries only the JSON line).
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}
