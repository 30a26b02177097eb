//! Step output of the demo: one line per step with its outcome and
//! measured time, details indented below, progress dots while a step
//! waits, and the JSON summary.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Column where the outcome of a step starts.
const OUTCOME_COLUMN: usize = 52;
/// One progress dot per this much waiting.
const DOT_INTERVAL: Duration = Duration::from_millis(500);

/// What a finished step shows and records.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Lines printed indented under the step line.
    pub details: Vec<String>,
    /// Facts for the JSON summary.
    pub facts: serde_json::Value,
}

impl Outcome {
    pub fn new(facts: serde_json::Value) -> Self {
        Self {
            details: Vec::new(),
            facts,
        }
    }

    /// Adds one detail line.
    pub fn line(&mut self, text: impl Into<String>) {
        self.details.push(text.into());
    }

    /// Adds every line of a multi-line text, indented by two spaces.
    pub fn block(&mut self, text: &str) {
        for line in text.lines() {
            self.details.push(format!("  {line}"));
        }
    }
}

/// One step in the JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub name: String,
    pub ok: bool,
    pub millis: u128,
    pub facts: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the human-readable lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    /// With `--json` the summary owns stdout.
    Stderr,
}

impl Sink {
    fn write(self, text: &str) {
        // A closed terminal or pipe must not stop the demo's cleanup.
        let _ = match self {
            Sink::Stdout => write_flush(&mut std::io::stdout().lock(), text),
            Sink::Stderr => write_flush(&mut std::io::stderr().lock(), text),
        };
    }
}

fn write_flush(out: &mut impl std::io::Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Prints steps as they run and keeps their records.
#[derive(Debug)]
pub struct Reporter {
    total: usize,
    sink: Sink,
    details: bool,
    records: Vec<StepRecord>,
}

impl Reporter {
    /// A reporter for `total` steps; `details` false prints step lines only.
    pub fn new(total: usize, sink: Sink, details: bool) -> Self {
        Self {
            total,
            sink,
            details,
            records: Vec::new(),
        }
    }

    /// Prints a line that belongs to no step.
    pub fn note(&self, text: &str) {
        self.sink.write(&format!("{text}\n"));
    }

    /// Returns the records of the steps run so far.
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }

    /// Runs step `number` called `name`, printing its line, progress
    /// dots while it runs, its outcome with the elapsed time and its
    /// details. Returns false when the step failed.
    pub async fn step(
        &mut self,
        number: usize,
        name: &str,
        work: impl Future<Output = anyhow::Result<Outcome>>,
    ) -> bool {
        let head = format!("[{number:>2}/{}] {name} ", self.total);
        self.sink.write(&head);
        let dots = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn(tick(self.sink, Arc::clone(&dots)));
        let started = Instant::now();
        let result = work.await;
        let millis = started.elapsed().as_millis();
        ticker.abort();
        let _ = ticker.await;

        let printed = head.chars().count() + dots.load(Ordering::SeqCst);
        let fill = ".".repeat(OUTCOME_COLUMN.saturating_sub(printed));
        let (ok, status, facts, details, error) = match result {
            Ok(outcome) => (true, "ok", outcome.facts, outcome.details, None),
            Err(error) => {
                let text = format!("{error:#}");
                let lines = vec![format!("error: {text}")];
                (false, "FAILED", serde_json::Value::Null, lines, Some(text))
            }
        };
        self.sink
            .write(&format!("{fill} {status} {millis:>6} ms\n"));
        if self.details || !ok {
            for line in &details {
                self.sink.write(&format!("       {line}\n"));
            }
        }
        self.records.push(StepRecord {
            name: name.to_string(),
            ok,
            millis,
            facts,
            error,
        });
        ok
    }
}

/// Prints a dot per `DOT_INTERVAL` until aborted.
async fn tick(sink: Sink, dots: Arc<AtomicUsize>) {
    loop {
        tokio::time::sleep(DOT_INTERVAL).await;
        sink.write(".");
        dots.fetch_add(1, Ordering::SeqCst);
    }
}
