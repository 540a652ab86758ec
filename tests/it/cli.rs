//! The command line: `check` verdicts with key paths, `run` refusing a bad
//! config, and graceful shutdown on SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// Every `:LINE:COL:` in `s`.
fn line_cols(s: &str) -> Vec<(usize, usize)> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str| {
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse::<usize>().ok()
        } else {
            None
        }
    };
    (0..parts.len().saturating_sub(2))
        .filter_map(|i| Some((num(parts[i])?, num(parts[i + 1])?)))
        .collect()
}

/// 1-based number of the first line of `toml` containing `needle`.
fn line_of(toml: &str, needle: &str) -> usize {
    toml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{toml}"))
        + 1
}

/// HS256 and three sites that use the keys the checks look at.
fn good_config() -> Config {
    let up: SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    Config::new()
        .site(
            Site::new(HOST, up)
                .public_paths(&["/assets/*", "/favicon.ico"])
                .extra("forward_session_cookie = false"),
        )
        .site(
            Site::new("*.shop.nixtech.app", up)
                .tenant_from_host("{tenant}.shop.nixtech.app")
                .unauthenticated("reject"),
        )
        .site(
            Site::new("login.nixtech.app", up)
                .unauthenticated("redirect")
                .login_url("https://nixtech.app/login?return_to={url}"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_good_config() {
    let dir = TempDir::new();

    let hs = dir.write("hs.toml", &materialize(&good_config(), &dir));
    let (code, out, err) = run_cli(
        &["check", "--config", &hs.display().to_string()],
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "ok", "stderr: {err}");

    let rs = dir.write(
        "rs.toml",
        &materialize(&good_config().token(Token::rs256()), &dir),
    );
    let (code, out, err) = run_cli(&["check", "--config", &rs.display().to_string()], &[]).await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "ok", "stderr: {err}");
}

struct BadCase {
    name: &'static str,
    toml: String,
    with_secret: bool,
    /// Any of these key paths is an acceptable name for the error.
    keys: &'static [&'static str],
    /// The error must point at the line of one of these snippets.
    lines: &'static [&'static str],
}

fn bad_cases(dir: &TempDir) -> Vec<BadCase> {
    let good = materialize(&good_config(), dir);
    let up: SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    let with_sites = |sites: &[Site]| {
        let config = sites
            .iter()
            .fold(Config::new(), |c, site| c.site(site.clone()));
        materialize(&config, dir)
    };
    let with_token = |token: Token| materialize(&good_config().token(token), dir);
    let replace = |from: &str, to: &str| {
        assert!(good.contains(from), "{from:?} not in the good config");
        good.replacen(from, to, 1)
    };
    vec![
        BadCase {
            name: "unknown key",
            toml: with_token(Token::hs256().extra("colour = \"blue\"")),
            with_secret: true,
            keys: &["token.colour"],
            lines: &["colour = "],
        },
        BadCase {
            name: "unknown key in a site",
            toml: with_sites(&[Site::new(HOST, up).extra("upstrem = \"x\"")]),
            with_secret: true,
            keys: &["site[0].upstrem"],
            lines: &["upstrem = "],
        },
        BadCase {
            name: "bad duration",
            toml: with_token(Token::hs256().leeway("soon")),
            with_secret: true,
            keys: &["token.leeway"],
            lines: &["leeway = \"soon\""],
        },
        BadCase {
            name: "bad address",
            toml: {
                let mut lines: Vec<String> = good.lines().map(String::from).collect();
                let i = lines
                    .iter()
                    .position(|l| l.starts_with("addr = "))
                    .expect("listen addr line");
                lines[i] = "addr = \"not-an-address\"".into();
                lines.join("\n")
            },
            with_secret: true,
            keys: &["listen.addr"],
            lines: &["not-an-address"],
        },
        BadCase {
            name: "bad upstream address",
            toml: replace(
                "upstream = \"127.0.0.1:3000\"",
                "upstream = \"127.0.0.1:notaport\"",
            ),
            with_secret: true,
            keys: &["site[0].upstream"],
            lines: &["notaport"],
        },
        BadCase {
            name: "missing secret env var",
            toml: good.clone(),
            with_secret: false,
            keys: &["token.secret_env"],
            lines: &["secret_env = "],
        },
        BadCase {
            name: "wildcard in the middle of a host",
            toml: with_sites(&[Site::new("cafe.*.nixtech.app", up)]),
            with_secret: true,
            keys: &["site[0].host"],
            lines: &["cafe.*.nixtech.app"],
        },
        BadCase {
            name: "partial-label wildcard",
            toml: with_sites(&[Site::new(HOST, up), Site::new("caf*.nixtech.app", up)]),
            with_secret: true,
            keys: &["site[1].host"],
            lines: &["caf*.nixtech.app"],
        },
        BadCase {
            name: "tenant_from_host without {tenant}",
            toml: with_sites(&[
                Site::new(HOST, up),
                Site::new("*.shop.nixtech.app", up).tenant_from_host("acme.shop.nixtech.app"),
            ]),
            with_secret: true,
            keys: &["site[1].tenant_from_host"],
            lines: &["tenant_from_host = "],
        },
        BadCase {
            name: "redirect without login_url",
            toml: with_sites(&[Site::new(HOST, up).unauthenticated("redirect")]),
            with_secret: true,
            keys: &["site[0].login_url", "site[0].unauthenticated"],
            lines: &["[[site]]", "unauthenticated = \"redirect\""],
        },
        BadCase {
            name: "unknown unauthenticated mode",
            toml: with_sites(&[Site::new(HOST, up).unauthenticated("maybe")]),
            with_secret: true,
            keys: &["site[0].unauthenticated"],
            lines: &["\"maybe\""],
        },
        BadCase {
            name: "missing public key file",
            toml: with_token(
                Token::rs256().public_key_file(Path::new("/nonexistent/sessiongate/key.pem")),
            ),
            with_secret: false,
            keys: &["token.public_key_file"],
            lines: &["public_key_file = "],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_bad_configs_naming_the_key() {
    let dir = TempDir::new();
    let mut failures = Vec::new();
    for (i, case) in bad_cases(&dir).into_iter().enumerate() {
        let file = format!("bad-{i}.toml");
        let path = dir.write(&file, &case.toml);
        let env: &[(&str, &str)] = if case.with_secret {
            &[(SECRET_ENV, SECRET)]
        } else {
            &[]
        };
        let (code, out, err) =
            run_cli(&["check", "--config", &path.display().to_string()], env).await;
        let mut problems = Vec::new();
        if code != Some(2) {
            problems.push(format!("exit code {code:?}, want 2"));
        }
        if out.lines().any(|l| l.trim() == "ok") {
            problems.push("printed ok".to_string());
        }
        match err
            .lines()
            .find(|l| case.keys.iter().any(|k| l.contains(k)))
        {
            None => problems.push(format!("no stderr line names {:?}", case.keys)),
            Some(line) => {
                if !line.contains(&file) {
                    problems.push(format!("error line does not name the file {file}: {line}"));
                }
                let lcs = line_cols(line);
                if lcs.is_empty() {
                    problems.push(format!("no :LINE:COL: in {line:?}"));
                }
                let want: Vec<usize> = case.lines.iter().map(|n| line_of(&case.toml, n)).collect();
                if !lcs.iter().any(|(l, _)| want.contains(l)) {
                    problems.push(format!(
                        "points at {lcs:?}, want a line in {want:?}: {line}"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stdout: {out:?}\n  stderr: {err:?}",
                case.name,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_a_missing_file_or_broken_toml_exits_2() {
    let dir = TempDir::new();
    let missing = dir.path().join("nope.toml");
    let (code, out, _err) = run_cli(
        &["check", "--config", &missing.display().to_string()],
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(2));
    assert_ne!(out.trim(), "ok");

    let broken = dir.write("broken.toml", "[listen\naddr = \"127.0.0.1:1\"\n");
    let (code, out, err) = run_cli(
        &["check", "--config", &broken.display().to_string()],
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(2), "stderr: {err}");
    assert_ne!(out.trim(), "ok");
    assert!(
        !line_cols(&err).is_empty(),
        "a syntax error carries line:col: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_config_exits_2_and_does_not_listen() {
    let dir = TempDir::new();
    let cases = [
        (
            "token.leeway",
            true,
            "leeway = \"30s\"",
            "leeway = \"soon\"",
        ),
        ("token.secret_env", false, "", ""),
    ];
    for (key, with_secret, from, to) in cases {
        let addrs = Addrs::fresh();
        let (listen, admin) = (addrs.listen, addrs.admin);
        let toml = fill_placeholders(
            &good_config().toml(),
            addrs,
            &dir.path().join("audit.jsonl"),
        )
        .replacen(from, to, if from.is_empty() { 0 } else { 1 });
        let path = dir.write(&format!("run-{}.toml", key.replace('.', "-")), &toml);

        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["run", "--config", &path.display().to_string()])
            .env_remove(SECRET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if with_secret {
            cmd.env(SECRET_ENV, SECRET);
        }
        let child = cmd.spawn().expect("spawn sessiongate run");
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{key}: `run` with a bad config kept running"))
            .expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: stderr: {err}");
        assert!(err.contains(key), "{key}: stderr does not name it: {err}");
        assert!(!is_listening(listen).await, "{key}: public port listening");
        assert!(!is_listening(admin).await, "{key}: admin port listening");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_response_finish_then_exits_0() {
    let up = spawn_upstream_with(|req| {
        if req.target == "/slow" {
            Reply::default()
                .body(b"slow but complete")
                .delay(Duration::from_secs(1))
        } else {
            Reply::default()
        }
    })
    .await;
    let mut sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let c = sc.client();
    let url = sc.url("cafe.nixtech.app", "/slow");
    let cookie = session_cookie(&token(&claims()));

    let in_flight = tokio::spawn(async move {
        let r = c
            .get(url)
            .header("cookie", cookie)
            .send()
            .await
            .expect("in-flight request failed");
        let status = r.status().as_u16();
        let body = r.text().await.expect("in-flight body");
        (status, body)
    });
    up.wait_for_count(1).await;
    sc.signal("TERM");

    let (status, body) = tokio::time::timeout(Duration::from_secs(60), in_flight)
        .await
        .expect("in-flight request never finished")
        .expect("task");
    assert_eq!(status, 200);
    assert_eq!(body, "slow but complete");
    assert_eq!(
        up.last().header("x-auth-user-id").as_deref(),
        Some("user-42")
    );

    let exit = sc.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    assert!(!is_listening(sc.addr).await, "still listening after exit");
}
