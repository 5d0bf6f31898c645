//! `ferryctl check`: exit 0 on the examples, non-zero with one line per
//! problem (file, object, field) on a broken folder.

use std::process::Command;

#[test]
fn examples_are_clean() -> anyhow::Result<()> {
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["check", "--manifests"])
        .arg(ferry_tests::repo_root().join("deploy/examples"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    Ok(())
}

#[test]
fn problems_are_listed_one_per_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80, targetPort: 0}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: not-an-ip}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: fine}\n",
    )?;
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["check", "--manifests"])
        .arg(dir.path())
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout)?;
    let file = dir.path().join("bad.yaml");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{}:1: document 1 (Service shop/web): spec.ports[0].targetPort: 0 is outside 1-65535", file.display()),
            format!("{}:7: document 2 (Pod default/p): status.podIP: \"not-an-ip\" is not an IP address", file.display()),
        ]
    );
    Ok(())
}

#[test]
fn a_missing_folder_is_a_usage_error() -> anyhow::Result<()> {
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["check", "--manifests", "/nonexistent/ferry"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)?
        .contains("--manifests /nonexistent/ferry: not a readable folder"));
    Ok(())
}

#[test]
fn a_file_that_is_not_text_fails_the_check() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("binary.yaml"),
        b"apiVersion: v1\nkind: Node\nmetadata: {name: \xff}\n",
    )?;
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["check", "--manifests"])
        .arg(dir.path())
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(
        stdout.trim_end(),
        format!(
            "{}:1: document 1: cannot read: not UTF-8 text (line 3, byte 43)",
            dir.path().join("binary.yaml").display()
        )
    );
    Ok(())
}

#[test]
fn a_kubectl_list_is_checked_and_other_kinds_are_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("dump.yaml"),
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: settings, namespace: shop}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n  spec:\n    ports: [{port: 80, targetPort: 0}]\n",
    )?;
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["check", "--manifests"])
        .arg(dir.path())
        .output()?;
    // The list's Service is read (and its problem reported), not skipped.
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.contains("(Service shop/web): spec.ports[0].targetPort: 0 is outside 1-65535"),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("not read by Ferry (ignored): 1 ConfigMap"),
        "{stderr}"
    );
    Ok(())
}
