//! `-p`: a progress bar on stderr (percent, throughput, ETA); nothing on stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar shown only when asked for.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` bytes, or a silent stand-in when `show` is false.
    pub fn new(show: bool, total: u64) -> Self {
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "    ({percent:>3}.00/100%) [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Progress { bar }
    }

    /// Records that `done` of `total` bytes are finished.
    pub fn update(&mut self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }

    /// Completes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
