//! Progress of a large transfer on stderr: one line that updates in place on a terminal,
//! a line every tenth of the way otherwise (a log file gets no `\r`s).

use std::io::{IsTerminal, Write};

/// Transfers smaller than this finish too quickly to need progress.
const SHOWN_FROM_BYTES: u64 = 8 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    shown: bool,
    terminal: bool,
    /// The percent (on a terminal) or tenth (otherwise) last printed.
    last_step: Option<u64>,
}

impl Progress {
    /// Progress of `what` ("upload", "download") over `total` bytes; silent below 8 MiB.
    pub fn new(what: &'static str, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        Progress { what, total, done: 0, shown: total >= SHOWN_FROM_BYTES, terminal, last_step: None }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if !self.shown {
            return;
        }
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(100).min(100);
        let step = if self.terminal { percent } else { percent / 10 };
        if self.last_step == Some(step) {
            return;
        }
        self.last_step = Some(step);
        let line =
            format!("{}: {:.1} / {:.1} MiB ({percent}%)", self.what, self.done as f64 / MIB, self.total as f64 / MIB);
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal {
            let end = if self.done >= self.total { "\n" } else { "" };
            write!(stderr, "\r{line}{end}")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
    }
}

impl Drop for Progress {
    /// Ends an unfinished line on a terminal, so that an error after it starts on its own.
    fn drop(&mut self) {
        if self.terminal && self.last_step.is_some() && self.done < self.total {
            eprintln!();
        }
    }
}
