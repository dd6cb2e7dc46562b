//! Results: latency histograms and their summary, the row of one WAL run,
//! and the two printed forms of any workload's rows (a padded table, or one
//! JSON object per line).
//!
//! Owns: units (every latency is recorded and reported in whole
//! microseconds) and the JSON field names, which scripts depend on: fields
//! may be added, never renamed or removed.
//! Not: measuring anything.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tracks exactly; slower samples saturate here.
const LATENCY_US_MAX: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in microseconds (1 µs to 60 s, 3 digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(latency_us);
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// One WAL run: one backend at one producer count. Serialized as one JSON
/// line; `records`, `syncs` and `spare_misses` count the measured window only.
#[derive(Clone, Debug, Serialize)]
pub struct WalRow {
    pub bench: &'static str,
    /// Same as `bench` (every workload's rows carry `workload`).
    pub workload: &'static str,
    pub backend: &'static str,
    pub producers: u32,
    pub record_bytes: u32,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// Appends started in the measured window (each completed, durable).
    pub records: u64,
    pub records_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Records made durable per write + fdatasync, from `WalStats`.
    pub records_per_fsync: f64,
    pub syncs: u64,
    pub fdatasync_p50_us: u64,
    pub fdatasync_p99_us: u64,
    pub spare_misses: u64,
}

/// The rows as a table with a header line, right-aligned columns.
pub fn table(rows: &[WalRow]) -> String {
    const HEADER: [&str; 8] = [
        "backend",
        "producers",
        "records/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "records/fsync",
        "fdatasync p50 us",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.backend.to_string(),
                row.producers.to_string(),
                format!("{:.0}", row.records_per_sec),
                row.p50_us.to_string(),
                row.p99_us.to_string(),
                row.p999_us.to_string(),
                format!("{:.1}", row.records_per_fsync),
                row.fdatasync_p50_us.to_string(),
            ]
        })
        .collect();
    render_table(&HEADER, &cells)
}

/// Any row type as one JSON object on one line.
pub fn to_json_line<T: Serialize>(row: &T) -> String {
    serde_json::to_string(row).expect("bench rows always serialize")
}

/// Runs a workload (`run_all`, which calls back with each row as it
/// finishes) and prints its rows: with `json`, one JSON line per row as it
/// comes; otherwise `table` of all rows at the end.
pub fn print_rows<R: Serialize, E>(
    json: bool,
    run_all: impl FnOnce(&mut dyn FnMut(&R)) -> Result<Vec<R>, E>,
    table: impl FnOnce(&[R]) -> String,
) -> Result<(), E> {
    let rows = run_all(&mut |row| {
        if json {
            println!("{}", to_json_line(row));
        }
    })?;
    if !json {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// A header line and one line per row; the first column left-aligned (it
/// names the run), the others right-aligned (numbers), two spaces apart.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in rows {
        assert_eq!(line.len(), header.len(), "one cell per column");
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut push_line = |line: &[&str]| {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    push_line(header);
    for line in rows {
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        push_line(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &'static str, producers: u32) -> WalRow {
        WalRow {
            bench: "wal",
            workload: "wal",
            backend,
            producers,
            record_bytes: 64,
            seconds: 5.0,
            warmup_seconds: 0.5,
            records: 1_500_000,
            records_per_sec: 300_000.4,
            p50_us: 210,
            p99_us: 400,
            p999_us: 900,
            max_us: 2000,
            records_per_fsync: 63.25,
            syncs: 23_715,
            fdatasync_p50_us: 101,
            fdatasync_p99_us: 180,
            spare_misses: 0,
        }
    }

    #[test]
    fn summary_percentiles_are_ordered() {
        let mut histogram = latency_histogram();
        for us in 1..=1000u64 {
            record_latency(&mut histogram, Duration::from_micros(us));
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1000);
        assert!((499..=501).contains(&summary.p50_us), "{summary:?}");
        assert!((989..=991).contains(&summary.p99_us), "{summary:?}");
        assert!(summary.p999_us <= summary.max_us);
    }

    #[test]
    fn table_has_a_header_and_one_aligned_line_per_row() {
        let text = table(&[row("uring", 64), row("portable", 256)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("backend"));
        assert!(lines[1].starts_with("uring "));
        assert!(lines[1].contains(" 300000 "));
        assert!(lines[1].contains(" 63.2 ") || lines[1].contains(" 63.3 "));
        assert_eq!(lines[1].len(), lines[2].len(), "columns line up");
    }

    #[test]
    fn json_line_is_one_object_with_the_documented_keys() {
        let line = to_json_line(&row("portable", 16));
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["bench"], "wal");
        assert_eq!(value["backend"], "portable");
        assert_eq!(value["producers"], 16);
        assert_eq!(value["fdatasync_p50_us"], 101);
    }
}
