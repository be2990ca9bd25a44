//! Progress of a training phase: a bar on a terminal, a line every 5% otherwise.

use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar on a terminal; a line every 5% otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    name: &'static str,
    total: usize,
    started: Instant,
    start_step: usize,
    /// The step of the previous update.
    last: std::cell::Cell<usize>,
}

impl Progress {
    pub(crate) fn new(name: &'static str, total: usize, at: usize, show: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (show && tty).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(name);
            b.set_position(at as u64);
            b
        });
        Self {
            bar,
            lines: show && !tty,
            name,
            total,
            started: Instant::now(),
            start_step: at,
            last: std::cell::Cell::new(at),
        }
    }

    pub(crate) fn update(&self, step: usize, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_position(step as u64);
            b.set_message(msg.to_string());
        } else if self.lines {
            // A line whenever another 5% is done (updates come every 1% of the phase, so a
            // test on exact multiples would miss most of them).
            let twentieth = |s: usize| s * 20 / self.total.max(1);
            if twentieth(step) > twentieth(self.last.replace(step)) || step == self.total {
                let done = (step - self.start_step).max(1) as f64;
                let rate = self.started.elapsed().as_secs_f64() / done;
                let eta = rate * (self.total - step) as f64;
                eprintln!(
                    "{:>8} {step}/{} ({:.1} s/step, eta {:.0} s) {msg}",
                    self.name, self.total, rate, eta
                );
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
