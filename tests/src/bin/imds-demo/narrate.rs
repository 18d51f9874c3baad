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

/// Widest line the demo prints on purpose; longer text is wrapped.
pub const MAX_WIDTH: usize = 100;

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
        for part in wrap(&format!("  > {title}"), MAX_WIDTH, 2) {
            self.line(&part);
        }
    }

    /// Narration, indented under the current step.
    pub fn say(&mut self, text: &str) {
        for line in text.lines() {
            for part in wrap(line, MAX_WIDTH - 2, 0) {
                self.line(&format!("  {part}"));
            }
        }
    }

    /// A detail under the current narration (what a workload did or saw).
    pub fn detail(&mut self, text: &str) {
        for line in text.lines() {
            for part in wrap(line, MAX_WIDTH - 6, 3) {
                self.line(&format!("      {part}"));
            }
        }
    }

    /// A shell command, `$ ...`, continued with ` \` on the next lines
    /// when it is wider than the screen.
    pub fn command(&mut self, command: &str) {
        let parts = wrap(command, MAX_WIDTH - 10, 4);
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            let start = if i == 0 { "$ " } else { "  " };
            let end = if i == last { "" } else { " \\" };
            self.line(&format!("      {start}{part}{end}"));
        }
    }

    /// Lines quoted verbatim (a script, a command, a JSON line), marked so
    /// they cannot be mistaken for narration.
    pub fn quote(&mut self, marker: &str, text: &str) {
        for line in text.lines() {
            self.line(format!("      {marker} {line}").trim_end());
        }
    }

    /// A block that is already laid out (a table), indented.
    pub fn block(&mut self, text: &str) {
        for line in text.lines() {
            self.line(format!("    {line}").trim_end());
        }
    }

    /// Prose after a label (`fix: ...`), `indent` columns in, wrapped to
    /// the screen; continuation lines line up after the label.
    pub fn labelled(&mut self, indent: usize, label: &str, text: &str) {
        let pad = " ".repeat(indent);
        let hang = label.chars().count();
        for part in wrap(&format!("{label}{text}"), MAX_WIDTH - indent, hang) {
            self.line(&format!("{pad}{part}"));
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

/// Breaks `text` after the last of `after` (`,` in JSON, `/` in a path)
/// that keeps each piece within `width` characters; hard where there is none.
pub fn chop(text: &str, width: usize, after: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    let width = width.max(1);
    while rest.len() > width {
        let cut = (1..=width)
            .rev()
            .find(|&i| after.contains(&rest[i - 1]))
            .unwrap_or(width);
        out.push(rest[..cut].iter().collect());
        rest.drain(..cut);
    }
    out.push(rest.into_iter().collect());
    out
}

/// A table whose rows are wider than `width`: each row is cut at the same
/// column boundary (two spaces before it in every row), the rightmost one
/// that lets the left part fit, and its right part goes on the next line,
/// `hang` columns in; the columns stay aligned in both parts. `None` when
/// no boundary fits.
pub fn split_table(rows: &[&str], width: usize, hang: usize) -> Option<Vec<String>> {
    let rows: Vec<Vec<char>> = rows
        .iter()
        .map(|r| r.trim_end().chars().collect())
        .collect();
    let widest = rows.iter().map(Vec::len).max().unwrap_or(0);
    if widest <= width {
        return Some(rows.iter().map(|r| r.iter().collect()).collect());
    }
    let blank = |r: &Vec<char>, i: usize| r.get(i).is_none_or(|c| *c == ' ');
    let cut = (2..widest).rev().find(|&p| {
        rows.iter().all(|r| blank(r, p - 1) && blank(r, p - 2))
            && rows.iter().any(|r| !blank(r, p))
            && rows.iter().all(|r| {
                let left: String = r.iter().take(p).collect();
                left.trim_end().chars().count() <= width
            })
    })?;
    let mut out = Vec::new();
    for r in &rows {
        let left: String = r.iter().take(cut).collect();
        out.push(left.trim_end().to_owned());
        let right: String = r.iter().skip(cut).collect();
        if !right.trim().is_empty() {
            out.push(format!("{}{}", " ".repeat(hang), right.trim_end()));
        }
    }
    Some(out)
}

/// Breaks `line` at spaces into lines of at most `width` characters. Its
/// leading spaces are kept; continuation lines get `hang` more. Spaces
/// inside a line are kept (a table's columns stay aligned); a word longer
/// than the width is left whole.
pub fn wrap(line: &str, width: usize, hang: usize) -> Vec<String> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let mut out = Vec::new();
    let mut rest: &str = line.trim_end();
    let mut prefix = String::new();
    loop {
        let room = width.saturating_sub(prefix.chars().count());
        if rest.chars().count() <= room {
            out.push(format!("{prefix}{rest}"));
            return out;
        }
        // The last space that leaves the head within the room (past the
        // line's own indentation); else the first one.
        let spaces = rest
            .char_indices()
            .filter(|&(i, c)| c == ' ' && !rest[..i].trim_end().is_empty());
        let mut cut = None;
        for (count, (i, _)) in spaces.enumerate() {
            let fits = rest[..i].trim_end().chars().count() <= room;
            if fits || (cut.is_none() && count == 0) {
                cut = Some(i);
            }
            if !fits {
                break;
            }
        }
        let Some(cut) = cut else {
            out.push(format!("{prefix}{rest}"));
            return out;
        };
        out.push(format!("{prefix}{}", rest[..cut].trim_end()));
        rest = rest[cut..].trim_start();
        if rest.is_empty() {
            return out;
        }
        prefix = " ".repeat(indent + hang);
    }
}

#[cfg(test)]
mod tests {
    use super::{chop, split_table, wrap};

    #[test]
    fn short_lines_stay_whole() {
        assert_eq!(wrap("  a  b", 10, 4), ["  a  b"]);
    }

    #[test]
    fn long_lines_break_at_spaces_and_hang() {
        assert_eq!(
            wrap("  aaaa  bbbb cccc dddd", 12, 2),
            ["  aaaa  bbbb", "    cccc", "    dddd"]
        );
        // Columns before the break keep their spacing.
        assert_eq!(wrap("x     y zzzzzz", 9, 0), ["x     y", "zzzzzz"]);
    }

    #[test]
    fn chop_breaks_after_separators() {
        assert_eq!(chop("/a/bb/ccc", 4, &['/']), ["/a/", "bb/", "ccc"]);
        assert_eq!(chop("abcdef", 4, &['/']), ["abcd", "ef"]);
        assert_eq!(
            chop("{\"a\":1,\"b\":2}", 8, &[',']),
            ["{\"a\":1,", "\"b\":2}"]
        );
    }

    #[test]
    fn wide_tables_split_at_a_column() {
        let rows = ["NAME  N   LONG", "a     1   xxxxxx", "bbbb  22  y"];
        assert_eq!(
            split_table(&rows, 10, 2).unwrap(),
            [
                "NAME  N", "  LONG", "a     1", "  xxxxxx", "bbbb  22", "  y"
            ]
        );
        // Right-aligned numbers keep their alignment in the right part.
        let rows = ["A   N1  B", "x    1  yyyyy", "zz  10  w"];
        assert_eq!(
            split_table(&rows, 3, 1).unwrap(),
            ["A", " N1  B", "x", "  1  yyyyy", "zz", " 10  w"]
        );
        assert_eq!(split_table(&["ab"], 10, 2).unwrap(), ["ab"]);
        assert_eq!(split_table(&["abcdefgh ij"], 4, 2), None);
    }

    #[test]
    fn long_words_are_left_whole() {
        assert_eq!(
            wrap("a /a/very/long/path b", 8, 1),
            ["a", " /a/very/long/path", " b"]
        );
        assert_eq!(wrap("/a/very/long/path", 8, 1), ["/a/very/long/path"]);
    }
}
