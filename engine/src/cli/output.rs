//! What commands print: results to stdout, problems to stderr, tables aligned to their content.
//!
//! Input: the text a command produces. Output: stdout/stderr, and progress bars on a terminal. A reader that goes away
//! (`mailflow queue list | head -3`) ends the command quietly with status 0 instead of the
//! standard library's panic ("failed printing to stdout: Broken pipe"); a closed stderr is
//! ignored. Limits: a table is built in memory (its rows come from memory already).
//! Security: cells are printed with control characters replaced, so a queue entry's error text
//! cannot drive the terminal.

use std::fmt;
use std::io::{IsTerminal, Write};

/// Writes to stdout; a gone reader ends the process quietly (see the module documentation).
pub fn write_out(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        write_err(format_args!("mailflow: cannot write the output: {e}\n"));
        std::process::exit(1);
    }
}

/// Writes to stderr, ignoring a closed one (there is nowhere left to say so).
pub fn write_err(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `println!` that ends quietly when the reader goes away.
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::output::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that ends quietly when the reader goes away.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write_out(format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed stderr.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::output::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A table: a header line and rows, each column as wide as its widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    /// Columns aligned to the right (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Column names; a name starting with `>` is aligned to the right (the `>` is dropped).
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|c| printable(&c)).collect());
    }

    /// The table as text; with `width`, the last column is cut so lines fit it.
    pub fn render(&self, width: Option<usize>) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                let last = i + 1 == columns;
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            let line = line.trim_end();
            match width {
                Some(width) => out.push_str(&cut(line, width)),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    /// Prints the table, cut to the terminal's width when stdout is one.
    pub fn print(&self) {
        write_out(format_args!("{}", self.render(terminal_width())));
    }
}

/// A progress bar on stderr for `len` steps of `what`, drawn only when stderr is a terminal
/// (a script or a log file sees nothing). The caller prints the summary line when done.
pub fn progress(len: u64, what: &'static str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar.tick();
    bar
}

/// The width of the terminal on stdout; `None` when stdout is not a terminal.
pub fn terminal_width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    match rustix::termios::tcgetwinsize(&stdout) {
        Ok(size) if size.ws_col > 0 => Some(usize::from(size.ws_col)),
        _ => None,
    }
}

/// `line` cut to `width` characters, the last one an ellipsis when something was cut.
fn cut(line: &str, width: usize) -> String {
    if line.chars().count() <= width || width == 0 {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// A cell on one line, without control characters.
fn printable(cell: &str) -> String {
    cell.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(&["ID", ">ATTEMPTS", "ERROR"]);
        table.row(vec!["a".into(), "3".into(), "timeout\r\nagain \x1b[31m".into()]);
        table.row(vec!["longer-id".into(), "12".into(), String::new()]);
        assert_eq!(
            table.render(None),
            "ID         ATTEMPTS  ERROR\n\
             a                 3  timeout  again  [31m\n\
             longer-id        12\n"
        );
        assert_eq!(table.render(Some(20)), "ID         ATTEMPTS…\na                 3…\nlonger-id        12\n");
    }
}
