//! The `shardline` command as a user runs it: `check` on good and bad files, and `demo`
//! starting a local cluster that psql can use, then stopping everything on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardline::localpg::free_port;

fn shardline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
}

/// Runs psql as app/app against 127.0.0.1:`port`, one `-c` per command.
fn psql(port: u16, commands: &[&str]) -> std::io::Result<std::process::Output> {
    let mut cmd = Command::new("psql");
    cmd.env("PGPASSWORD", "app")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            "app",
            "-p",
        ])
        .arg(port.to_string());
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.output()
}

#[test]
fn check_explains_a_valid_file_and_names_the_line_of_a_bad_one() -> std::io::Result<()> {
    let repo_config = concat!(env!("CARGO_MANIFEST_DIR"), "/../shards.yaml");
    let out = shardline().args(["check", repo_config]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("users: hash(id int8)"), "{text}");
    assert!(text.contains("countries: reference"), "{text}");

    let dir = std::env::temp_dir().join(format!("shardline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "users:\n  - name: app\n    password: app\nshards:\n  - name: s0\n    port: 5432\ntables:\n  - name: t\n    sharding: hsah\n    column: id\n",
    )?;
    let out = shardline().arg("check").arg(&bad).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 9") && err.contains("hsah"), "{err}");
    std::fs::remove_dir_all(&dir)
}

#[test]
fn demo_serves_psql_and_stops_on_ctrl_c() -> std::io::Result<()> {
    // The demo uses port, port+1.. for the shards and port+1000 for metrics: all must be free.
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let port = (0..50)
        .map(|_| free_port())
        .find(|p| *p < 60_000 && [1, 2, 1000].iter().all(|d| bindable(p + d)))
        .unwrap_or_else(free_port);
    let dir = std::env::temp_dir().join(format!("shardline-demo-test-{}", std::process::id()));
    let mut demo = shardline()
        .args([
            "demo",
            "--shards",
            "2",
            "--port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            std::env::temp_dir().join(format!("shardline-demo-test-{}.log", std::process::id())),
        )?))
        .spawn()?;
    let stdout = demo
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let mut ready = false;
    while let Some(line) = lines.next().transpose()? {
        if line.contains("shardline is ready") {
            ready = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let log = std::fs::read_to_string(
        std::env::temp_dir().join(format!("shardline-demo-test-{}.log", std::process::id())),
    )
    .unwrap_or_default();
    assert!(ready, "demo did not report ready:\n{log}");

    let session = psql(
        port,
        &[
            "CREATE TABLE users (id bigint PRIMARY KEY, name text)",
            "INSERT INTO users (id, name) VALUES (42, 'demo')",
            "SELECT name FROM users WHERE id = 42",
        ],
    )?;
    let out = String::from_utf8_lossy(&session.stdout);
    assert!(
        session.status.success(),
        "{}",
        String::from_utf8_lossy(&session.stderr)
    );
    assert!(out.lines().any(|l| l == "demo"), "{out}");
    assert!(
        dir.join("shards.yaml").exists(),
        "the demo writes its effective config"
    );

    // Ctrl-C: the demo stops the proxy and the shards it started.
    let pid = demo.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status()?;
    let status = demo.wait()?;
    assert!(status.success(), "demo exited with {status}");
    let still_up = psql(port + 1, &["SELECT 1"])?;
    assert!(
        !still_up.status.success(),
        "shard 0 still running after the demo stopped"
    );
    let _ = Command::new("rm").arg("-rf").arg(&dir).status();
    Ok(())
}
