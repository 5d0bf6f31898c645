//! The process's own metrics, read from `/proc/self` at each scrape and
//! appended to every daemon's `/metrics`: the standard names Prometheus
//! client libraries use (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_threads`,
//! `process_start_time_seconds`), so existing dashboards and alerts work
//! unchanged, and `ferry_build_info{version, commit} 1`.

use std::fmt::Write as _;

/// What the daemon was built from, for `ferry_build_info`.
#[derive(Debug, Clone, Copy)]
pub struct Build<'a> {
    pub version: &'a str,
    pub commit: &'a str,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`: 100 on
/// every Linux architecture Ferry runs on).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: u64 = 4096;

/// The figures, as read.
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    start_seconds: f64,
    open_fds: u64,
    max_fds: Option<u64>,
}

/// Fields of `/proc/self/stat` after the command (which may hold spaces
/// and parentheses): state is field 3, utime 14, stime 15, threads 20,
/// starttime 22, vsize 23, rss 24.
fn parse_stat(stat: &str, boot_seconds: f64) -> Option<Figures> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Figures {
        cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
        threads: field(20)?,
        start_seconds: boot_seconds + field(22)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * PAGE_SIZE,
        ..Figures::default()
    })
}

/// `Max open files` soft limit of `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn parse_boot(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn read() -> Option<Figures> {
    let boot = parse_boot(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let mut figures = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?, boot)?;
    figures.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    figures.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| parse_max_fds(&l));
    Some(figures)
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition lines (OpenMetrics text) of the process and build
/// metrics. The process figures are left out where `/proc` cannot be read.
pub fn exposition(build: Build<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ferry_build_info What this binary was built from.\n# TYPE ferry_build_info gauge\nferry_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        escape(build.version),
        escape(build.commit)
    );
    if let Some(f) = read() {
        write_figures(&mut out, &f);
    }
    out
}

fn write_figures(out: &mut String, f: &Figures) {
    let mut metric = |name: &str, kind: &str, help: &str, sample: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}"
        );
    };
    metric(
        "process_cpu_seconds",
        "counter",
        "Total user and system CPU time spent in seconds.",
        "process_cpu_seconds_total",
        format!("{}", f.cpu_seconds),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        "process_resident_memory_bytes",
        f.resident_bytes.to_string(),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        "process_virtual_memory_bytes",
        f.virtual_bytes.to_string(),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        "process_open_fds",
        f.open_fds.to_string(),
    );
    if let Some(max) = f.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            "process_max_fds",
            max.to_string(),
        );
    }
    metric(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        "process_threads",
        f.threads.to_string(),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        "process_start_time_seconds",
        format!("{}", f.start_seconds),
    );
}

/// `exposition` placed before the `# EOF` line that ends an OpenMetrics
/// exposition (at the end if there is none).
pub fn append(mut encoded: String, build: Build<'_>) -> String {
    let extra = exposition(build);
    match encoded.rfind("# EOF") {
        Some(at) => encoded.insert_str(at, &extra),
        None => encoded.push_str(&extra),
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_command_with_spaces_and_parentheses() {
        // pid (comm) state ppid ... as the kernel writes it.
        let stat = "4242 (ferry (proxy) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let f = parse_stat(stat, 1_700_000_000.0).unwrap();
        assert_eq!(f.cpu_seconds, 3.0);
        assert_eq!(f.threads, 7);
        assert_eq!(f.start_seconds, 1_700_000_123.45);
        assert_eq!(f.virtual_bytes, 104_857_600);
        assert_eq!(f.resident_bytes, 2560 * 4096);
        assert_eq!(parse_stat("garbage", 0.0), None);
    }

    #[test]
    fn limits_and_boot_time_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
        assert_eq!(
            parse_boot("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
    }

    #[test]
    fn this_process_is_described_before_the_end_marker() {
        let text = append(
            "# TYPE ferry_x gauge\nferry_x 1\n# EOF\n".into(),
            Build {
                version: "0.1.0",
                commit: "abc\"d",
            },
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("ferry_build_info{version=\"0.1.0\",commit=\"abc\\\"d\"} 1\n"),
            "{text}"
        );
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_start_time_seconds") > 1_600_000_000.0);
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
