//! Following a process whose generations share its pipes: its first line on
//! stdout, and every line any generation writes to stderr, with the moment
//! each was read.

use std::io::{self, BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// Starts following `child`, whose generations share its pipes: its first
/// line on stdout (the rest is read and dropped, or a successor writing its
/// own first line would die of SIGPIPE), and every line on stderr.
pub fn follow_output(child: &mut Child) -> (String, Log) {
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    stdout.read_line(&mut line).expect("first line");
    thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
    let (sender, log) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let read = Instant::now();
            eprintln!("{line}");
            let _ = sender.send((read, line));
        }
    });
    (line, Log(log))
}

/// The lines every generation writes to stderr (also echoed to ours), with
/// the moment each was read.
pub struct Log(Receiver<(Instant, String)>);

impl Log {
    /// Waits for a line that contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_at(needle, timeout).1
    }

    /// [`Log::wait_for`], with the moment the line was read.
    pub fn wait_for_at(&self, needle: &str, timeout: Duration) -> (Instant, String) {
        self.first_line(|line| line.contains(needle), timeout)
            .unwrap_or_else(|| panic!("no log line with {needle:?} within {timeout:?}"))
    }

    /// Waits for a line that contains any of `needles`.
    pub fn wait_for_any(&self, needles: &[&str], timeout: Duration) -> String {
        self.first_line(|line| needles.iter().any(|n| line.contains(n)), timeout)
            .unwrap_or_else(|| panic!("no log line with any of {needles:?} within {timeout:?}"))
            .1
    }

    /// The first line (and when it was read) that `fits`, within `timeout`.
    fn first_line(
        &self,
        fits: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok((read, line)) if fits(&line) => return Some((read, line)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits for a line with each of `needles`, in any order (lines of two
    /// generations may come either way); returns them in the order asked.
    pub fn wait_for_all(&self, needles: &[&str], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut found: Vec<Option<String>> = vec![None; needles.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, line)) = self.0.recv_timeout(left) else {
                panic!("no log lines with all of {needles:?} within {timeout:?}");
            };
            if let Some(i) =
                (0..needles.len()).find(|&i| found[i].is_none() && line.contains(needles[i]))
            {
                found[i] = Some(line);
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Every line read up to the first that contains `needle`, that one last
    /// (the lines [`Log::wait_for`] would skip).
    pub fn until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok((_, line)) => {
                    let found = line.contains(needle);
                    lines.push(line);
                    if found {
                        return lines;
                    }
                }
                Err(_) => panic!("no log line with {needle:?} within {timeout:?}"),
            }
        }
    }

    /// The lines read so far and not yet looked at.
    pub fn lines(&self) -> Vec<String> {
        self.0.try_iter().map(|(_, line)| line).collect()
    }
}
