//! `ferryctl bug-report`: one `.tar.gz` with what a maintainer needs to
//! understand a mesh's trouble:
//! - the status report (`status.json`, `status.txt`);
//! - every proxy's config dump, metrics, flow log and recent log;
//! - every control plane replica's metrics and recent log;
//! - where the mesh's parts are (the lab's record, or the cluster's pods).
//!
//! Secrets are left out. No key material is read: the PKI folder is never
//! opened. Every file also passes through [`redact`], which replaces
//! private keys, bearer tokens and JWTs wherever they appear. What could
//! not be collected is listed in `errors.txt` with the reason, so nothing
//! is silently missing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::status;

/// Bytes kept from the end of each log.
pub const LOG_TAIL: u64 = 1 << 20;

/// Whether a line is part of a PEM body (base64, possibly padded).
fn base64_line(line: &str) -> bool {
    let line = line.trim();
    !line.is_empty()
        && line
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
}

/// The position just past `-----END <label>PRIVATE KEY-----` in `line`.
fn key_end(line: &str) -> Option<usize> {
    let start = line.find("-----END ")?;
    let close = line[start + 9..].find("-----")? + start + 9;
    line[start..close]
        .ends_with("PRIVATE KEY")
        .then_some(close + 5)
}

/// The position of a `-----BEGIN <label>PRIVATE KEY-----` in `line`.
fn key_begin(line: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = line[from..].find("-----BEGIN ") {
        let start = from + i;
        let label = start + "-----BEGIN ".len();
        // The label ends on the same line, or this is no marker.
        match line[label..].find("-----") {
            Some(close) if line[label..label + close].ends_with("PRIVATE KEY") => {
                return Some((start, label + close + 5));
            }
            _ => from = label,
        }
    }
    None
}

/// Replaces secrets in `text`: PEM private keys (whole blocks, one cut
/// off at the start of a log tail, and blocks written on one line),
/// `Bearer` tokens (`Bearer x`, `authorization=Bearer x`) and JWTs.
/// Returns the text and how many secrets were replaced.
pub fn redact(text: &str) -> (String, usize) {
    const KEY: &str = "[redacted private key]";
    let mut count = 0;
    let mut lines: Vec<String> = Vec::new();
    let mut in_key = false;
    for line in text.split_inclusive('\n') {
        let mut rest = line;
        let mut kept = String::new();
        loop {
            if in_key {
                match key_end(rest) {
                    Some(end) => {
                        in_key = false;
                        rest = &rest[end..];
                    }
                    None => {
                        // Still inside the key: keep only the line break.
                        if rest.ends_with('\n') {
                            kept.push('\n');
                        }
                        rest = "";
                        break;
                    }
                }
            } else if let Some((start, after)) = key_begin(rest) {
                kept.push_str(&rest[..start]);
                kept.push_str(KEY);
                count += 1;
                in_key = true;
                rest = &rest[after..];
            } else if let Some(end) = key_end(rest) {
                // The end of a key whose start was cut off (a log tail):
                // its body is the base64 lines just before.
                while lines.last().is_some_and(|l| base64_line(l)) {
                    lines.pop();
                }
                kept.push_str(KEY);
                count += 1;
                rest = &rest[end..];
            } else {
                break;
            }
        }
        kept.push_str(rest);
        // A line that was only key body leaves nothing.
        if !(kept == "\n" && line != "\n") {
            lines.push(kept);
        }
    }
    let out = lines.concat();
    // Bearer tokens and JWTs, word by word.
    let mut redacted = String::with_capacity(out.len());
    let mut bearer = false;
    for piece in out.split_inclusive(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        let word = piece.trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
        let tail = &piece[word.len()..];
        let jwt = word.starts_with("eyJ") && word.matches('.').count() == 2 && word.len() > 20;
        if (bearer && !word.is_empty()) || jwt {
            redacted.push_str("[redacted token]");
            redacted.push_str(tail);
            count += 1;
        } else {
            redacted.push_str(piece);
        }
        if !word.is_empty() {
            let lower = word.to_ascii_lowercase();
            bearer = lower == "bearer" || lower.ends_with("=bearer") || lower.ends_with(":bearer");
        }
    }
    (redacted, count)
}

/// The archive being written.
struct Archive {
    builder: tar::Builder<flate2::write::GzEncoder<std::fs::File>>,
    prefix: String,
    files: Vec<(String, usize)>,
    redacted: usize,
    errors: Vec<String>,
    now: u64,
}

impl Archive {
    fn add(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(bytes);
        let (clean, redacted) = redact(&text);
        self.redacted += redacted;
        let mut header = tar::Header::new_gnu();
        header.set_size(clean.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(self.now);
        header.set_cksum();
        let path = format!("{}/{name}", self.prefix);
        self.builder
            .append_data(&mut header, &path, clean.as_bytes())
            .with_context(|| format!("adding {path}"))?;
        self.files.push((name.to_string(), clean.len()));
        Ok(())
    }

    /// Adds what `got` gave, or records why it could not be had.
    fn add_or_note(&mut self, name: &str, got: anyhow::Result<Vec<u8>>) -> anyhow::Result<()> {
        match got {
            Ok(bytes) => self.add(name, &bytes),
            Err(e) => {
                self.errors.push(format!("{name}: {e:#}"));
                Ok(())
            }
        }
    }
}

/// The end of a log file (at most [`LOG_TAIL`] bytes, from a line start).
fn tail(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(LOG_TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if start > 0 {
        if let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            bytes.drain(..=newline);
        }
    }
    Ok(bytes)
}

/// The log files of daemon `stem` in `work`: `<stem>.log` and the
/// restarts' `<stem>.<n>.log`, oldest first.
fn logs_of(work: &Path, stem: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let middle = name.strip_prefix(stem)?.strip_suffix(".log")?;
            let order = if middle.is_empty() {
                0
            } else {
                middle.strip_prefix('.')?.parse::<u32>().ok()?
            };
            Some((order, entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// The recent logs of daemon `stem` in a lab's work folder: the end of
/// each of its files, restarts included (named as the files are).
pub fn lab_logs(work: &Path, stem: &str) -> Vec<(String, anyhow::Result<Vec<u8>>)> {
    let logs = logs_of(work, stem);
    if logs.is_empty() {
        return vec![(
            format!("{stem}.log"),
            Err(anyhow::anyhow!("no log in {}", work.display())),
        )];
    }
    logs.into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, tail(&path))
        })
        .collect()
}

/// What was written (`--output json|yaml`).
#[derive(Debug, serde::Serialize)]
pub struct Written {
    /// The archive.
    pub path: PathBuf,
    /// Each file inside and its size in bytes.
    pub files: Vec<(String, usize)>,
    /// Secrets replaced.
    pub redacted: usize,
    /// What could not be collected, and why.
    pub errors: Vec<String>,
}

/// The report's table for people.
pub fn table(written: &Written) -> String {
    let mut out = String::new();
    for (name, bytes) in &written.files {
        out.push_str(&format!("{bytes:>10}  {name}\n"));
    }
    for error in &written.errors {
        out.push_str(&format!("not collected: {error}\n"));
    }
    out.push_str(&format!(
        "wrote {} ({} files, {} secrets redacted)\n",
        written.path.display(),
        written.files.len(),
        written.redacted
    ));
    out
}

/// Collects the report of `mesh` into `out`.
pub async fn write(mesh: &super::Mesh, out: &Path) -> anyhow::Result<Written> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let prefix = out
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.trim_end_matches(".gz")
                .trim_end_matches(".tar")
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "ferry-bug-report".into());
    let mut archive = Archive {
        builder: tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::default(),
        )),
        prefix,
        files: Vec::new(),
        redacted: 0,
        errors: Vec::new(),
        now,
    };
    let answers = super::answers(mesh).await;
    let report = status::report(&answers, status::Thresholds::default());
    archive.add(
        "status.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    archive.add("status.txt", status::table(&report).as_bytes())?;
    archive.add("mesh.json", mesh.summary()?.as_bytes())?;

    for replica in mesh.replicas() {
        let dir = format!("control-plane/{}", replica.name);
        let metrics = mesh.replica_metrics(&replica).await.map(|b| b.to_vec());
        archive.add_or_note(&format!("{dir}/metrics.txt"), metrics)?;
        for (name, log) in mesh.replica_logs(&replica).await {
            archive.add_or_note(&format!("{dir}/{name}"), log)?;
        }
    }
    for node in mesh.nodes() {
        let dir = format!("nodes/{node}");
        for (file, path) in [
            ("config_dump.json", "/config_dump"),
            ("metrics.txt", "/metrics"),
            ("flows.json", "/flows?limit=1000000"),
        ] {
            let got = mesh.admin_get(&node, path).await.map(|b| b.to_vec());
            archive.add_or_note(&format!("{dir}/{file}"), got)?;
        }
        for (name, log) in mesh.proxy_logs(&node).await {
            archive.add_or_note(&format!("{dir}/{name}"), log)?;
        }
    }
    let mut readme = format!(
        "Ferry bug report of {}, written by ferryctl {} at Unix time {now}.\n\n\
         status.json, status.txt: `ferryctl status` of the mesh.\n\
         control-plane/<replica>/: metrics, recent log.\n\
         nodes/<node>/: the proxy's config dump, metrics, flow log, recent log.\n\
         mesh.json: where the mesh's parts are (the lab's record, or the cluster's pods).\n\n\
         Secrets: no key material was read, and {} secret(s) (private keys, bearer tokens, JWTs) were replaced with [redacted ...].\n",
        mesh.name(),
        ferry_api::build::LONG_VERSION,
        archive.redacted
    );
    if !archive.errors.is_empty() {
        readme.push_str("\nNot collected (see errors.txt).\n");
        let errors = archive.errors.join("\n") + "\n";
        archive.add("errors.txt", errors.as_bytes())?;
    }
    archive.add("README.txt", readme.as_bytes())?;
    let Archive {
        builder,
        files,
        redacted,
        errors,
        ..
    } = archive;
    let mut gz = builder.into_inner()?;
    gz.flush()?;
    gz.finish()?.sync_all()?;
    Ok(Written {
        path: out.to_path_buf(),
        files,
        redacted,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_bearer_tokens_and_jwts_are_redacted() {
        let text = "cert:\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                    key:\n-----BEGIN PRIVATE KEY-----\nMIGH\nAAAA\n-----END PRIVATE KEY-----\n\
                    ec:\n-----BEGIN EC PRIVATE KEY-----\nBBBB\n-----END EC PRIVATE KEY-----\n\
                    header authorization: Bearer abc.def-123 sent\n\
                    {\"token\":\"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl\"}\n";
        let (clean, count) = redact(text);
        assert_eq!(count, 4, "{clean}");
        assert!(
            clean.contains("-----BEGIN CERTIFICATE-----\nMIIB"),
            "{clean}"
        );
        for secret in ["MIGH", "BBBB", "abc.def-123", "eyJhbGci"] {
            assert!(!clean.contains(secret), "{secret} left in\n{clean}");
        }
        assert!(
            clean.contains("key:\n[redacted private key]\nec:\n[redacted private key]\n"),
            "{clean}"
        );
        assert!(clean.contains("Bearer [redacted token] sent"), "{clean}");
        assert!(
            clean.contains("{\"token\":\"[redacted token]\"}"),
            "{clean}"
        );
        assert_eq!(
            redact("nothing to hide\n"),
            ("nothing to hide\n".to_string(), 0)
        );
    }

    #[test]
    fn keys_cut_off_written_on_one_line_or_behind_a_false_marker_are_redacted() {
        // A marker without its closing dashes must not swallow the next.
        let (clean, _) = redact(
            "-----BEGIN x\n-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\nafter\n",
        );
        assert!(!clean.contains("SECRET"), "{clean}");
        assert!(
            clean.contains("-----BEGIN x\n") && clean.ends_with("after\n"),
            "{clean}"
        );
        // A log tail that starts inside a key.
        let (clean, count) = redact(
            "log line\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC==\n-----END RSA PRIVATE KEY-----\nnext\n",
        );
        assert_eq!(count, 1);
        assert_eq!(clean, "log line\n[redacted private key]\nnext\n");
        // A key in a JSON string, on one line.
        let (clean, _) = redact(
            "{\"key\":\"-----BEGIN PRIVATE KEY-----\\nQUJD\\n-----END PRIVATE KEY-----\\n\"}\n",
        );
        assert!(!clean.contains("QUJD"), "{clean}");
        // A key without an end: everything after it goes.
        let (clean, _) = redact("a\n-----BEGIN PRIVATE KEY-----\nQUJD\n");
        assert!(!clean.contains("QUJD"), "{clean}");
        // Bearer tokens in key=value fields.
        let (clean, _) = redact("authorization=Bearer abc123 ok\nAuthorization: bearer xyz\n");
        assert!(
            !clean.contains("abc123") && !clean.contains("xyz"),
            "{clean}"
        );
        assert!(clean.contains(" ok"), "{clean}");
    }

    #[test]
    fn logs_are_found_with_their_restarts_in_order_and_tails_start_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "proxy-node-a.log",
            "proxy-node-a.2.log",
            "proxy-node-a.1.log",
            "proxy-node-ab.log",
            "control-plane-2.log",
        ] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let names: Vec<String> = logs_of(dir.path(), "proxy-node-a")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "proxy-node-a.log",
                "proxy-node-a.1.log",
                "proxy-node-a.2.log"
            ]
        );
        assert!(logs_of(dir.path(), "control-plane").is_empty());
        let big = dir.path().join("big.log");
        let line = "x".repeat(99) + "\n";
        std::fs::write(&big, line.repeat(20_000)).unwrap();
        let tail = tail(&big).unwrap();
        assert!(tail.len() as u64 <= LOG_TAIL);
        assert!(tail.starts_with(line.as_bytes()));
    }
}
