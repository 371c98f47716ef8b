//! Progress of long work on stderr: on a terminal, one line rewritten in place with a bar;
//! into a file or a pipe, only whole lines at the end of each stage, so logs stay readable.

use std::io::{IsTerminal, Write};

pub struct ProgressLine {
    terminal: bool,
    width: usize,
}

impl Default for ProgressLine {
    fn default() -> Self {
        ProgressLine { terminal: std::io::stderr().is_terminal(), width: 24 }
    }
}

impl ProgressLine {
    /// `label [#####-----] done/total detail`, rewritten in place; nothing off a terminal.
    pub fn update(&self, label: &str, done: usize, total: usize, detail: &str) {
        if !self.terminal {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", bar_line(label, done, total, detail, self.width));
        let _ = err.flush();
    }

    /// Ends the current line with `message` (printed on and off a terminal).
    pub fn finish(&self, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{message}");
    }
}

/// The text of one progress line.
pub fn bar_line(label: &str, done: usize, total: usize, detail: &str, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
    format!("{label} [{}{}] {done}/{total} {detail}", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(bar_line("epoch 1/3", 1, 4, "loss 0.1", 8), "epoch 1/3 [##------] 1/4 loss 0.1");
        assert_eq!(bar_line("x", 4, 4, "", 4), "x [####] 4/4 ");
        assert_eq!(bar_line("x", 0, 0, "", 4), "x [####] 0/0 ");
    }
}
