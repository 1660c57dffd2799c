//! A strict reader of the Prometheus text exposition format (0.0.4) and of OpenMetrics 1.0
//! text, for tests: every line must follow the grammar, every sample must belong to a family
//! declared by `# TYPE` before it, families must not be split or repeated, no series may
//! appear twice, counters must not be negative, and each histogram's buckets must be
//! cumulative, in increasing `le` order, end at `+Inf` and agree with `_count`. Also used by
//! `loadgen/tests/metrics.rs` (through `#[path]`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

/// Which text format to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Prometheus text 0.0.4: a counter's `# TYPE` names the sample (`x_total`).
    Prometheus,
    /// OpenMetrics: a counter's family is `x` with samples `x_total` (and `x_created`), and the
    /// text ends with `# EOF`.
    OpenMetrics,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A whole exposition, by family name.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The value of the sample `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// The value of the unlabelled sample `name` (the test fails if there is none).
    pub fn value(&self, name: &str) -> f64 {
        self.get(name, &[]).unwrap_or_else(|| panic!("no sample {name}"))
    }

    /// The sum of every sample called `name`, whatever its labels (the test fails if there is
    /// none).
    pub fn sum(&self, name: &str) -> f64 {
        let v: Vec<f64> = self.samples().filter(|s| s.name == name).map(|s| s.value).collect();
        assert!(!v.is_empty(), "no sample {name}");
        v.iter().sum()
    }

    /// Every sample.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.values().flat_map(|f| f.samples.iter())
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(is_name_start) && c.all(is_name_char)
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value as Go's `strconv.ParseFloat` (which Prometheus uses) reads it.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) && !s.is_empty() => {
            s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample called `name` belongs to, for a family of type `kind` called
/// `family`: whether the name is one of its sample names.
fn belongs(dialect: Dialect, kind: &str, family: &str, name: &str) -> bool {
    let suffix = name.strip_prefix(family);
    match (kind, suffix) {
        (_, None) => false,
        ("histogram", Some(s)) => {
            ["_bucket", "_sum", "_count"].contains(&s) || (s == "_created" && dialect == Dialect::OpenMetrics)
        }
        ("summary", Some(s)) => ["", "_sum", "_count"].contains(&s),
        ("counter", Some(s)) if dialect == Dialect::OpenMetrics => s == "_total" || s == "_created",
        (_, Some(s)) => s.is_empty(),
    }
}

/// Reads `text` strictly; `Err` says which line is wrong and why.
pub fn parse(text: &str, dialect: Dialect) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut current: Option<String> = None;
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
    let mut eof = false;
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF".into()));
        }
        if line.is_empty() {
            if dialect == Dialect::OpenMetrics {
                return Err(at("empty line".into()));
            }
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let keyword = words.next().unwrap_or("");
            if dialect == Dialect::OpenMetrics && keyword == "EOF" && comment == " EOF" {
                eof = true;
                continue;
            }
            if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
                if dialect == Dialect::OpenMetrics {
                    return Err(at("comment other than HELP, TYPE, UNIT or EOF".into()));
                }
                continue;
            }
            let name = words.next().ok_or_else(|| at("no metric name".into()))?;
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let arg = words.next().unwrap_or("");
            if current.as_deref() != Some(name) {
                if exp.families.contains_key(name) || closed.contains(name) {
                    return Err(at(format!("family {name} described again after other families")));
                }
                if let Some(c) = current.take() {
                    closed.insert(c);
                }
                current = Some(name.to_string());
                exp.families.insert(name.to_string(), Family::default());
            }
            let fam = exp.families.get_mut(name).expect("just inserted");
            match keyword {
                "HELP" => {
                    if fam.help.replace(arg.to_string()).is_some() {
                        return Err(at("second HELP".into()));
                    }
                }
                "TYPE" => {
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset"];
                    if !kinds.contains(&arg) {
                        return Err(at(format!("unknown type {arg:?}")));
                    }
                    if !fam.kind.is_empty() || !fam.samples.is_empty() {
                        return Err(at("TYPE after samples or twice".into()));
                    }
                    fam.kind = arg.to_string();
                }
                _ => {
                    if dialect != Dialect::OpenMetrics || !name.ends_with(&format!("_{arg}")) {
                        return Err(at("UNIT that is not a suffix of the name".into()));
                    }
                }
            }
            continue;
        }
        // A sample.
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.strip_prefix(' ').ok_or_else(|| at("no space before the value".into()))?.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = current.clone().ok_or_else(|| at("sample before any # TYPE".into()))?;
        let fam = exp.families.get_mut(&family).expect("current family exists");
        if fam.kind.is_empty() {
            return Err(at(format!("family {family} has no # TYPE")));
        }
        if !belongs(dialect, &fam.kind, &family, name) {
            return Err(at(format!("sample {name} is not of the {} family {family}", fam.kind)));
        }
        if (fam.kind == "counter" || name.ends_with("_count") || name.ends_with("_bucket"))
            && (value.is_nan() || value < 0.0)
        {
            return Err(at("negative or NaN count".into()));
        }
        if !series.insert((name.to_string(), labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        fam.samples.push(Sample { name: name.to_string(), labels, value });
    }
    if dialect == Dialect::OpenMetrics && !eof {
        return Err("no # EOF at the end".into());
    }
    for (name, fam) in &exp.families {
        if fam.kind.is_empty() {
            return Err(format!("family {name} has no # TYPE"));
        }
        if fam.kind == "histogram" {
            check_histogram(name, fam)?;
        }
    }
    Ok(exp)
}

/// One histogram series: its (le, count) buckets, `_count` and `_sum`.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>, Option<f64>);

/// Buckets cumulative, `le` increasing and ending at `+Inf`, which equals `_count`; one
/// `_sum` and `_count` per series.
fn check_histogram(name: &str, fam: &Family) -> Result<(), String> {
    let mut by_series: BTreeMap<BTreeMap<String, String>, HistogramSeries> = BTreeMap::new();
    for s in &fam.samples {
        let mut key = s.labels.clone();
        let le = key.remove("le");
        let entry = by_series.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            let le = le.ok_or_else(|| format!("{name}: bucket without le"))?;
            entry.0.push((parse_value(&le)?, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        } else if s.name.ends_with("_sum") {
            entry.2 = Some(s.value);
        }
    }
    for (labels, (buckets, count, sum)) in by_series {
        let what = format!("{name}{labels:?}");
        let (count, _) = (count.ok_or(format!("{what}: no _count"))?, sum.ok_or(format!("{what}: no _sum"))?);
        let last = buckets.last().ok_or(format!("{what}: no buckets"))?;
        if last.0 != f64::INFINITY || last.1 != count {
            return Err(format!("{what}: the last bucket is not +Inf = _count"));
        }
        for w in buckets.windows(2) {
            if w[0].0 >= w[1].0 || w[0].0.is_nan() || w[1].0.is_nan() || w[0].1 > w[1].1 {
                return Err(format!("{what}: buckets not increasing and cumulative: {w:?}"));
            }
        }
    }
    Ok(())
}

/// `GET /metrics` from `addr` with an optional `Accept` header: the status line, the
/// `Content-Type` and the body (the test fails on an I/O error or a malformed answer).
pub fn get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{accept}\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let mut content_type = String::new();
    let mut length = None;
    for l in lines {
        let (k, v) = l.split_once(':').expect("a header line");
        match k.to_ascii_lowercase().as_str() {
            "content-type" => content_type = v.trim().to_string(),
            "content-length" => length = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    assert_eq!(length, Some(body.len()), "Content-Length matches the body");
    (status, content_type, body.to_string())
}

/// Scrapes `/metrics` in the Prometheus text format and reads it strictly.
pub fn scrape(addr: std::net::SocketAddr) -> Exposition {
    let (status, content_type, body) = get(addr, "/metrics", None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse(&body, Dialect::Prometheus).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// A scrape that shows everything the registrar had answered before this call: waits (a
/// bounded poll) until every shard has published a snapshot after the call, then scrapes.
pub fn settled(addr: std::net::SocketAddr) -> Exposition {
    let before = scrape(addr);
    let shards = before.value("rserpool_shards") as usize;
    let published = |e: &Exposition, i: usize| {
        e.get("rserpool_metrics_publications_total", &[("shard", &i.to_string())]).expect("a shard's publications")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = scrape(addr);
        if (0..shards).all(|i| published(&now, i) > published(&before, i)) {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "the shards stopped publishing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs Prometheus's own checker (`promtool check metrics`, its parser and lint) on `text`
/// where it is installed (`apt-get install prometheus`); says so and returns where not.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the exposition is checked by the test's own reader only");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}
