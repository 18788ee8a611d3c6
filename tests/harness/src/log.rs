//! What a failing test shows of an agent it ran: its log's end.
use std::path::Path;

/// The last `n` lines of the file at `path`, empty when it cannot be read.
pub fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
