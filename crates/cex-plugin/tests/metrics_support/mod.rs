//! Shared fixtures of the metrics tests. A simulated node is laid out from
//! a built-in machine and runs its fake kernel. The `cex-plugin` binary
//! serves `METRICS_LISTEN` on a loopback port. A plain HTTP/1.1 client and
//! a strict parser read the Prometheus text and OpenMetrics formats.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cex_sim::kernel::{FakeKernel, RunningKernel};
use cex_sim::layout::SimNode;

/// Generous wait for events that take milliseconds on an idle machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The built-in machine: card 0 (CEX8C) and card 4 (CEX8P), each with
/// domains 41 and 42.
pub const MACHINE: &str = "cex8-mixed-lpar";

/// One set `blue` with APQNs 0/41 and 4/41.
pub const BLUE_CONFIG: &str = r#"{"cryptoconfigsets":[{"setname":"blue","project":"blue",
  "apqns":[{"adapter":0,"domain":41},{"adapter":4,"domain":41}]}]}"#;

/// A simulated node with its fake kernel running.
pub struct SimRoot {
    pub node: SimNode,
    _kernel: RunningKernel,
    pub temp: tempfile::TempDir,
}

impl SimRoot {
    /// Lays out [`MACHINE`] with the config `config`.
    pub fn new(config: &str) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().join("node");
        let machine = cex_sim::machines::by_name(MACHINE).expect("built-in machine");
        let node = SimNode::create(machine, &root).expect("lay out");
        let kernel = FakeKernel::new(&root)
            .expect("fake kernel")
            .start()
            .expect("start fake kernel");
        fs::create_dir_all(root.join("var/lib/kubelet/device-plugins")).expect("plugin dir");
        fs::create_dir_all(root.join("var/lib/kubelet/pod-resources")).expect("pod-resources dir");
        let sim = SimRoot {
            node,
            _kernel: kernel,
            temp,
        };
        sim.write_config(config);
        sim
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.node.root().join(relative)
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.path("var/lib/kubelet/device-plugins")
    }

    pub fn pod_resources_socket(&self) -> PathBuf {
        self.path("var/lib/kubelet/pod-resources/kubelet.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.path("config/cex_resources.json")
    }

    /// Writes the config through a temp file and a rename.
    pub fn write_config(&self, json: &str) {
        let path = self.config_file();
        fs::create_dir_all(path.parent().expect("config dir")).expect("config dir");
        let temp = path.with_extension("tmp");
        fs::write(&temp, json).expect("config");
        fs::rename(&temp, &path).expect("config rename");
    }

    /// Starts the agent with 1 s intervals, metrics on a free loopback
    /// port, node name `node`, and `extra` flags.
    pub fn spawn_agent(&self, node: &str, extra: &[&str]) -> MetricsAgent {
        let log = self.temp.path().join(format!("agent-{node}.log"));
        let log_file = fs::File::create(&log).expect("log file");
        let root = self.node.root();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cex-plugin"));
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .env("APQN_CHECK_INTERVAL", "1")
            .env("CRYPTOCONFIG_CHECK_INTERVAL", "1")
            .env("PODLISTER_POLL_INTERVAL", "1")
            .env("NODENAME", node)
            .env("METRICS_LISTEN", "127.0.0.1:0")
            .env("SHADOWSYSFS_BASEDIR", root.join("var/tmp/shadowsysfs"))
            .env("CCS_JSON_FILE", self.config_file())
            .env("APSYSFS_BUSDIR", root.join("sys/bus/ap"))
            .env("APSYSFS_DEVSDIR", root.join("sys/devices/ap"))
            .env("ZCRYPT_CLASSDIR", root.join("sys/class/zcrypt"))
            .env("ZCRYPT_NODESDIR", root.join("sys/devices/virtual/zcrypt"))
            .env("DEV_DIR", root.join("dev"))
            .env("PROC_SYSINFO_FILE", root.join("proc/sysinfo"))
            .env("KUBELET_DEVICE_PLUGIN_DIR", self.plugin_dir())
            .env("KUBELET_POD_RESOURCES_SOCKET", self.pod_resources_socket())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command.spawn().expect("cex-plugin starts");
        let mut agent = MetricsAgent {
            child,
            log,
            addr: None,
        };
        agent.addr = Some(agent.wait_for_listener());
        agent
    }
}

/// A running `cex-plugin` process, killed on drop.
pub struct MetricsAgent {
    pub child: Child,
    pub log: PathBuf,
    addr: Option<SocketAddr>,
}

/// The log text before the listener's address.
const LISTENING: &str = "serving /metrics, /healthz and /readyz on ";

impl MetricsAgent {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Returns the metrics listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("listener address")
    }

    /// Reads the bound address from the start-up log, because the agent
    /// listens on port 0 so that parallel tests never collide.
    fn wait_for_listener(&mut self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let text = self.log_text();
            if let Some(start) = text.find(LISTENING) {
                let rest = &text[start + LISTENING.len()..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '"')
                    .unwrap_or(rest.len());
                return rest[..end].parse().expect("listener address");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cex-plugin exited with {status}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no metrics listener in the log:\n{}", self.log_text());
    }

    /// Scrapes `/metrics` in the Prometheus text format and parses it.
    pub fn scrape(&self) -> Exposition {
        let response = http_get(self.addr(), "/metrics", Some("text/plain"));
        assert_eq!(response.status, 200, "{}", response.body);
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        parse(&response.body, Format::Text)
            .unwrap_or_else(|error| panic!("invalid exposition: {error}\n{}", response.body))
    }
}

impl Drop for MetricsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status, lower-case headers and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }
}

/// Sends one `GET` over HTTP/1.1 with `Connection: close` and reads the
/// whole response, de-chunking it when needed.
pub fn http_get(addr: SocketAddr, target: &str, accept: Option<&str>) -> HttpResponse {
    try_http_get(addr, target, accept)
        .unwrap_or_else(|error| panic!("GET {target} from {addr} failed: {error}"))
}

/// Like [`http_get`], but returns a failure to connect as an error, for
/// servers that are still starting.
pub fn try_http_get(
    addr: SocketAddr,
    target: &str,
    accept: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let accept = accept
        .map(|value| format!("Accept: {value}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(key, value)| key == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The exposition format being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

/// One sample: series name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: the declared type of each family and the samples.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Returns the value of the series `name` whose labels include `labels`;
    /// panics when several series match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "several series match {name} {labels:?}: {matching:?}"
        );
        matching.first().map(|sample| sample.value)
    }

    /// Returns the names of all series.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|sample| sample.name.clone())
            .collect()
    }
}

/// Parses an exposition strictly: every line is a comment of a known kind
/// or a sample; every sample belongs to a family declared by `# TYPE`
/// before it, with the suffixes its type allows; no series repeats;
/// OpenMetrics text ends with `# EOF`.
pub fn parse(text: &str, format: Format) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut seen = BTreeSet::new();
    let mut eof = false;
    for (number, line) in text.lines().enumerate() {
        let fail = |message: &str| format!("line {}: {message}: {line:?}", number + 1);
        if eof {
            return Err(fail("text after # EOF"));
        }
        if let Some(comment) = line.strip_prefix("# ") {
            parse_comment(comment, format, &mut exposition, &mut eof)
                .map_err(|error| fail(&error))?;
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(fail("empty line or malformed comment"));
        }
        let sample = parse_sample(line).map_err(|error| fail(&error))?;
        family_of(&sample.name, &exposition.types, format).map_err(|error| fail(&error))?;
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !seen.insert(key) {
            return Err(fail("repeated series"));
        }
        exposition.samples.push(sample);
    }
    if format == Format::OpenMetrics && !eof {
        return Err("OpenMetrics text without # EOF".to_string());
    }
    Ok(exposition)
}

fn parse_comment(
    comment: &str,
    format: Format,
    exposition: &mut Exposition,
    eof: &mut bool,
) -> Result<(), String> {
    if comment == "EOF" && format == Format::OpenMetrics {
        *eof = true;
        return Ok(());
    }
    let (keyword, rest) = comment.split_once(' ').ok_or("comment without a name")?;
    let (name, value) = rest.split_once(' ').ok_or("comment without a value")?;
    check_name(name)?;
    match keyword {
        "HELP" => Ok(()),
        "UNIT" if format == Format::OpenMetrics => Ok(()),
        "TYPE" => {
            let allowed: &[&str] = match format {
                Format::Text => &["counter", "gauge", "histogram", "summary", "untyped"],
                Format::OpenMetrics => &[
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "unknown",
                    "info",
                    "stateset",
                    "gaugehistogram",
                ],
            };
            if !allowed.contains(&value) {
                return Err(format!("unknown type {value:?}"));
            }
            if exposition
                .types
                .insert(name.to_string(), value.to_string())
                .is_some()
            {
                return Err(format!("family {name} declared twice"));
            }
            Ok(())
        }
        _ => Err(format!("unknown comment keyword {keyword:?}")),
    }
}

/// Checks that `name` belongs to a declared family with a suffix its type
/// allows.
fn family_of(name: &str, types: &BTreeMap<String, String>, format: Format) -> Result<(), String> {
    let suffixes: &[(&str, &[&str])] = &[
        ("", &["gauge", "untyped", "unknown"]),
        ("_total", &["counter"]),
        ("_info", &["info"]),
        ("_bucket", &["histogram"]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
        ("_created", &["counter", "histogram", "summary"]),
    ];
    for (suffix, kinds) in suffixes {
        let Some(family) = name.strip_suffix(suffix) else {
            continue;
        };
        // The Prometheus text format names a counter's family with its
        // `_total` and an info family with its `_info`.
        let family = match (format, *suffix) {
            (Format::Text, "_total" | "_info") => name,
            _ => family,
        };
        let Some(kind) = types.get(family) else {
            continue;
        };
        let kind = match (format, kind.as_str()) {
            (Format::Text, "counter") => "counter",
            (Format::Text, "gauge") if *suffix == "_info" => "info",
            (_, other) => other,
        };
        if kinds.contains(&kind) {
            return Ok(());
        }
    }
    Err(format!("sample {name} belongs to no declared family"))
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c == ' ')
        .ok_or("sample without a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .map_err(|_| format!("invalid timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".to_string());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `key="value",...}` and returns the text after the brace.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        check_name(key)?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (index, '"') => break index,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    other => return Err(format!("invalid escape \\{other}")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("invalid value {text:?}")),
    }
}

/// Polls `probe` every 200 ms until it returns `Some` or [`WAIT`] passes.
pub fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(found) = probe() {
            return Some(found);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    probe()
}

/// Returns the path of `program` on `PATH`, if installed.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| Path::new(candidate).is_file())
}
