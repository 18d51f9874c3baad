//! Where the demo's words go.
//!
//! Narration, workload output and tables are for people; the monitor's JSON
//! lines are for machines. Normally everything human goes to stdout. With
//! `--json` the JSON lines go to stdout and everything human to stderr, so
//! `imds-demo --json | jq` sees nothing but JSON.

use std::io::{self, Write};

use serde_json::Value;

/// Width of the rules under headings.
const RULE_WIDTH: usize = 78;

pub struct Narrator {
    human: Box<dyn Write>,
    json_on_stdout: bool,
}

impl Narrator {
    pub fn new(json_on_stdout: bool) -> Self {
        let human: Box<dyn Write> = if json_on_stdout {
            Box::new(io::stderr())
        } else {
            Box::new(io::stdout())
        };
        Self {
            human,
            json_on_stdout,
        }
    }

    /// Writes one human line. Write errors (a closed pipe) are ignored: the
    /// demo's outcome is its exit code, not whether anyone kept reading.
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.human, "{text}");
    }

    /// The demo's title.
    pub fn banner(&mut self, title: &str, subtitle: &str) {
        self.line(title);
        self.line(subtitle);
        self.line(&"=".repeat(RULE_WIDTH));
    }

    /// A numbered step heading, e.g. `[2/5] Start the monitor`.
    pub fn step(&mut self, number: usize, total: usize, title: &str) {
        self.line("");
        self.line(&format!("[{number}/{total}] {title}"));
        self.line(&"-".repeat(RULE_WIDTH));
    }

    /// A sub-heading inside a step (one workload, one table).
    pub fn topic(&mut self, title: &str) {
        self.line("");
        self.line(&format!("  > {title}"));
    }

    /// Narration, indented under the current step.
    pub fn say(&mut self, text: &str) {
        for line in text.lines() {
            self.line(&format!("  {line}"));
        }
    }

    /// A detail under the current narration (what a workload did or saw).
    pub fn detail(&mut self, text: &str) {
        for line in text.lines() {
            self.line(&format!("      {line}"));
        }
    }

    /// Lines quoted verbatim (a script, a command, a JSON line), marked so
    /// they cannot be mistaken for narration.
    pub fn quote(&mut self, marker: &str, text: &str) {
        for line in text.lines() {
            self.line(&format!("      {marker} {line}"));
        }
    }

    /// A block that is already laid out (a table), indented.
    pub fn block(&mut self, text: &str) {
        for line in text.lines() {
            self.line(&format!("    {line}"));
        }
    }

    pub fn blank(&mut self) {
        self.line("");
    }

    /// Whether `--json` sent the JSON lines to stdout.
    pub fn json_on_stdout(&self) -> bool {
        self.json_on_stdout
    }

    /// One raw JSON line on stdout (only with `--json`).
    pub fn json(&mut self, event: &Value) {
        if self.json_on_stdout {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{event}");
        }
    }

    pub fn flush(&mut self) {
        let _ = self.human.flush();
        let _ = io::stdout().flush();
    }
}
