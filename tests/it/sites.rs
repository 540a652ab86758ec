//! Sites in a directory: every `*.toml` of `sites_dir` is one site, and a change to that
//! directory (a file added, edited, deleted, renamed, or the whole directory swapped by a
//! symlink, as Kubernetes updates a ConfigMap) reloads the config within 2 s with no signal.
//! A broken file keeps the previous config serving, counted and logged with its name; a reload
//! that changes one site leaves the others' connections, liveness answers and upstream
//! connections as they were; no request fails while it happens. `check` validates the set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::common::*;

const RELOADS: &str = "sessiongate_config_reload_total";
/// The contract's bound between a change on disk and the proxy serving it.
const RELOAD_BOUND: Duration = Duration::from_secs(2);

const LEGACY: &str = "legacy.nixtech.app";
const STRICT: &str = "strict.nixtech.app";

/// An upstream that answers `body` to everything.
async fn app(body: &'static [u8]) -> Upstream {
    spawn_upstream_with(move |_| Reply::default().body(body)).await
}

/// Polls `host`'s `/` until its answer satisfies `ok`, failing once [`RELOAD_BOUND`] has passed
/// since `since` (the moment the change was on disk).
async fn served_within_2s(
    sc: &Sidecar,
    host: &str,
    since: Instant,
    what: &str,
    ok: impl Fn(&Result<(u16, String), String>) -> bool,
) {
    let c = sc.client();
    let cookie = normal_cookie();
    loop {
        let got = get(&c, &sc.url(host, "/"), Some(&cookie)).await;
        if ok(&got) {
            return;
        }
        assert!(
            since.elapsed() < RELOAD_BOUND,
            "{what}: {host} still answers {got:?} {:?} after the change; stderr:\n{}",
            since.elapsed(),
            sc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `host` answers `200 body` within 2 s of `since`.
async fn answers_within_2s(sc: &Sidecar, host: &str, since: Instant, body: &str) {
    served_within_2s(
        sc,
        host,
        since,
        &format!("200 {body}"),
        |r| matches!(r, Ok((200, b)) if b == body),
    )
    .await;
}

/// `host` answers `want` now.
async fn assert_answers(sc: &Sidecar, host: &str, want: (u16, &str)) {
    let got = get(&sc.client(), &sc.url(host, "/"), Some(&normal_cookie())).await;
    match &got {
        Ok((status, body)) if *status == want.0 && (want.0 == 421 || body == want.1) => {}
        _ => panic!("{host}: {got:?}, expected {want:?}"),
    }
}

/// Cafe on `one` and legacy on `two`, each in its own file of `sites.d`.
fn cafe_and_legacy(one: &Upstream, two: &Upstream) -> Config {
    Config::new()
        .sites_dir("sites.d")
        .site_file("cafe.toml", Site::new(HOST, one.addr))
        .site_file("legacy.toml", Site::new(LEGACY, two.addr))
}

fn sites_dir(sc: &Sidecar) -> PathBuf {
    sc.sites_dir.clone().expect("the config has a sites_dir")
}

/// Waits (bounded) until the stderr log holds `needle`.
async fn wait_for_log(sc: &Sidecar, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sc.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the log never said {needle:?}:\n{}",
            sc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_file_added_is_served_within_2_s_with_no_signal() {
    let (one, two, main) = (app(b"one").await, app(b"two").await, app(b"main").await);
    let sc = Sidecar::start(
        &Config::new()
            .sites_dir("sites.d")
            .site(Site::new(STRICT, main.addr))
            .site_file("cafe.toml", Site::new(HOST, one.addr)),
    )
    .await;
    assert_answers(&sc, HOST, (200, "one")).await;
    assert_answers(&sc, STRICT, (200, "main")).await;
    assert_answers(&sc, LEGACY, (421, "")).await;
    assert_eq!(two.count(), 0);

    write_config(
        &sites_dir(&sc).join("legacy.toml"),
        &Site::new(LEGACY, two.addr).file_toml(),
    );
    answers_within_2s(&sc, LEGACY, Instant::now(), "two").await;
    assert_eq!(
        two.last().header("x-auth-user-id").as_deref(),
        Some("user-42"),
        "the new site runs the whole pipeline"
    );
    assert_answers(&sc, HOST, (200, "one")).await;
    assert_answers(&sc, STRICT, (200, "main")).await;
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 1.0);
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_site_file_changes_that_site_and_leaves_the_others_as_they_were() {
    let (one, two, three) = (app(b"one").await, app(b"two").await, app(b"three").await);
    let backend = spawn_backend().await;
    let sc = Sidecar::start(
        &cafe_and_legacy(&one, &two).liveness(Liveness::on(&backend).cache_ttl("60s")),
    )
    .await;

    // An impersonating client of legacy on one keep-alive connection: one liveness lookup, one
    // upstream connection.
    let cookie = imp_cookie("imp-legacy");
    let legacy_get = |path: &str| {
        http1(
            "GET",
            path,
            &[("Host", &sc.authority(LEGACY)), ("Cookie", &cookie)],
            b"",
        )
    };
    let mut conn = Conn::open(sc.addr).await;
    conn.send(&legacy_get("/before")).await;
    let r = conn
        .response(false)
        .await
        .expect("a response before the reload");
    assert_eq!((r.status, r.body_text().as_str()), (200, "two"));
    assert_eq!(backend.calls_for("imp-legacy"), 1);
    assert_eq!(two.connections(), 1);

    let edited = Site::new(HOST, three.addr).public_paths(&["/assets/*"]);
    write_config(&sites_dir(&sc).join("cafe.toml"), &edited.file_toml());
    answers_within_2s(&sc, HOST, Instant::now(), "three").await;
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 1.0);

    // Legacy, untouched: the same client connection, the cached liveness answer and the
    // pooled upstream connection all carry on.
    conn.send(&legacy_get("/after")).await;
    let r = conn
        .response(false)
        .await
        .expect("the client's connection survived the reload");
    assert_eq!((r.status, r.body_text().as_str()), (200, "two"));
    assert_eq!(
        backend.calls_for("imp-legacy"),
        1,
        "the liveness cache was dropped"
    );
    assert_eq!(
        two.connections(),
        1,
        "the upstream connection was not reused"
    );
    assert_eq!(
        two.find("/after")
            .header("x-auth-impersonator-id")
            .as_deref(),
        Some("admin-7")
    );
    assert!(one.count() > 0 && !one.received("/after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_site_file_removes_the_site() {
    let (one, two) = (app(b"one").await, app(b"two").await);
    let sc = Sidecar::start(&cafe_and_legacy(&one, &two)).await;
    assert_answers(&sc, LEGACY, (200, "two")).await;

    std::fs::remove_file(sites_dir(&sc).join("legacy.toml")).expect("delete legacy.toml");
    served_within_2s(&sc, LEGACY, Instant::now(), "421", |r| {
        matches!(r, Ok((421, _)))
    })
    .await;
    let served = two.count();
    assert_answers(&sc, LEGACY, (421, "")).await;
    assert_eq!(
        two.count(),
        served,
        "a request reached the removed site's app"
    );
    assert_answers(&sc, HOST, (200, "one")).await;

    // A rename to another extension is a deletion too, and back again an addition.
    let dir = sites_dir(&sc);
    std::fs::rename(dir.join("cafe.toml"), dir.join("cafe.toml.disabled")).expect("rename");
    write_config(
        &dir.join("legacy.toml"),
        &Site::new(LEGACY, two.addr).file_toml(),
    );
    let since = Instant::now();
    served_within_2s(&sc, HOST, since, "421", |r| matches!(r, Ok((421, _)))).await;
    answers_within_2s(&sc, LEGACY, since, "two").await;
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_site_file_keeps_the_previous_config_and_is_counted_and_logged() {
    let (one, two) = (app(b"one").await, app(b"two").await);
    let sc = Sidecar::start(
        &Config::new()
            .sites_dir("sites.d")
            .site_file("cafe.toml", Site::new(HOST, one.addr)),
    )
    .await;
    let dir = sites_dir(&sc);

    // Half-written, in place (no rename): never served.
    let whole = Site::new(HOST, two.addr).file_toml();
    let half = &whole[..whole.find("upstream = \"").expect("upstream line") + 16];
    std::fs::write(dir.join("cafe.toml"), half).expect("write half a file");
    sc.wait_for_metric(RELOADS, &[("result", "error")], |v| v >= 1.0)
        .await;
    assert_answers(&sc, HOST, (200, "one")).await;
    wait_for_log(&sc, "sites.d/cafe.toml:2:").await;
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 0.0);

    // The rest of it arrives: served.
    std::fs::write(dir.join("cafe.toml"), &whole).expect("write the whole file");
    answers_within_2s(&sc, HOST, Instant::now(), "two").await;
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 1.0);

    // A new file that parses but does not validate: refused as a whole, with its key.
    write_config(
        &dir.join("legacy.toml"),
        "host = \"legacy.nixtech.app\"\nupstream = \"127.0.0.1:notaport\"\n",
    );
    sc.wait_for_metric(RELOADS, &[("result", "error")], |v| v >= 2.0)
        .await;
    wait_for_log(&sc, "sites.d/legacy.toml:2:12: upstream: ").await;
    assert_answers(&sc, LEGACY, (421, "")).await;
    assert_answers(&sc, HOST, (200, "two")).await;
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 1.0);
}

/// A Kubernetes-style update of `link` (`NAME -> ..data -> ..<version>` or, inside a
/// ConfigMap volume, `..data` next to the files' own symlinks): the new version's directory is
/// written first, then `..data` is replaced in one rename, then the old version is removed.
fn swap_data(root: &Path, version: &str, files: &[(&str, String)]) {
    let data = root.join(version);
    std::fs::create_dir(&data).expect("create the new version");
    for (name, text) in files {
        std::fs::write(data.join(name), text).expect("write a file of the new version");
    }
    let old = std::fs::read_link(root.join("..data")).ok();
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, root.join("..data")).expect("rename ..data_tmp over ..data");
    if let Some(old) = old {
        std::fs::remove_dir_all(root.join(old)).expect("remove the old version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swap_of_the_whole_directory_is_picked_up() {
    let (one, two, three) = (app(b"one").await, app(b"two").await, app(b"three").await);
    // sites.d -> ..data -> ..2026_01_01, as a ConfigMap mounted one level up lays it out.
    let k8s = TempDir::new();
    swap_data(
        k8s.path(),
        "..2026_01_01",
        &[("cafe.toml", Site::new(HOST, one.addr).file_toml())],
    );
    std::os::unix::fs::symlink("..data", k8s.path().join("sites.d")).expect("symlink sites.d");
    let dir = k8s.path().join("sites.d");
    let sc = Sidecar::start(&Config::new().sites_dir(&dir.display().to_string())).await;
    assert_answers(&sc, HOST, (200, "one")).await;
    assert_answers(&sc, LEGACY, (421, "")).await;

    swap_data(
        k8s.path(),
        "..2026_01_02",
        &[
            ("cafe.toml", Site::new(HOST, two.addr).file_toml()),
            ("legacy.toml", Site::new(LEGACY, three.addr).file_toml()),
        ],
    );
    let since = Instant::now();
    answers_within_2s(&sc, HOST, since, "two").await;
    answers_within_2s(&sc, LEGACY, since, "three").await;

    // And again, now that the first version's directory is gone.
    swap_data(
        k8s.path(),
        "..2026_01_03",
        &[("cafe.toml", Site::new(HOST, one.addr).file_toml())],
    );
    let since = Instant::now();
    answers_within_2s(&sc, HOST, since, "one").await;
    served_within_2s(&sc, LEGACY, since, "421", |r| matches!(r, Ok((421, _)))).await;
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_update_is_picked_up() {
    let (one, two, three) = (app(b"one").await, app(b"two").await, app(b"three").await);
    // The volume itself is sites_dir: `..data -> ..<version>` and `cafe.toml -> ..data/cafe.toml`
    // inside it; the kubelet adds a new key's symlink after the swap.
    let k8s = TempDir::new();
    let volume = k8s.path().join("sites.d");
    std::fs::create_dir(&volume).expect("create the volume");
    swap_data(
        &volume,
        "..2026_01_01_00_00_00.1",
        &[("cafe.toml", Site::new(HOST, one.addr).file_toml())],
    );
    std::os::unix::fs::symlink("..data/cafe.toml", volume.join("cafe.toml")).expect("symlink");
    let sc = Sidecar::start(&Config::new().sites_dir(&volume.display().to_string())).await;
    assert_answers(&sc, HOST, (200, "one")).await;

    swap_data(
        &volume,
        "..2026_01_01_00_01_00.2",
        &[
            ("cafe.toml", Site::new(HOST, two.addr).file_toml()),
            ("legacy.toml", Site::new(LEGACY, three.addr).file_toml()),
        ],
    );
    std::os::unix::fs::symlink("..data/legacy.toml", volume.join("legacy.toml")).expect("symlink");
    let since = Instant::now();
    answers_within_2s(&sc, HOST, since, "two").await;
    answers_within_2s(&sc, LEGACY, since, "three").await;
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_under_steady_load_during_twenty_reloads() {
    let (one, two, three) = (app(b"one").await, app(b"two").await, app(b"three").await);
    let sc = Sidecar::start(&cafe_and_legacy(&one, &two)).await;
    let dir = sites_dir(&sc);
    let cookie = session_cookie(&token(&claims()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            spawn_load(
                sc.client(),
                sc.url(HOST, "/load"),
                cookie.clone(),
                "one",
                stop.clone(),
            )
        })
        .collect();
    one.wait_for_count(50).await;

    // Twenty reloads: the loaded site's own file changes every other time (its answer does
    // not), the other site's file the rest.
    for n in 1..=20 {
        if n % 2 == 0 {
            let paths: &[&str] = if n % 4 == 0 { &["/a/*"] } else { &["/b/*"] };
            let cafe = Site::new(HOST, one.addr).public_paths(paths);
            write_config(&dir.join("cafe.toml"), &cafe.file_toml());
        } else {
            let to = if n % 4 == 1 { three.addr } else { two.addr };
            write_config(&dir.join("legacy.toml"), &Site::new(LEGACY, to).file_toml());
        }
        sc.wait_for_metric(RELOADS, &[("result", "ok")], |v| v >= f64::from(n))
            .await;
        let at = one.count();
        one.wait_for_count(at + 10).await;
    }
    let ok = finish_load(&stop, workers, "during the reloads").await;
    assert!(ok >= 250, "only {ok} load requests ran");
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 20.0);
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 0.0);
    assert_answers(&sc, LEGACY, (200, "two")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_the_sites_and_a_host_defined_twice_names_both_files() {
    let dir = TempDir::new();
    let up: std::net::SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    let config = Config::new()
        .sites_dir("sites.d")
        .site(Site::new(STRICT, up))
        .site_file(
            "cafe.toml",
            Site::new(HOST, up).deny(&["POST"], "/settings/*"),
        )
        .site_file("legacy.toml", Site::new(LEGACY, up));
    let main = dir.write("sessiongate.toml", &materialize(&config, &dir));
    let sites = config.write_site_files(dir.path()).expect("sites_dir");
    let check = || {
        let main = main.display().to_string();
        async move { run_cli(&["check", "--config", &main], &[(SECRET_ENV, SECRET)]).await }
    };

    let (code, out, err) = check().await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "ok", "stderr: {err}");
    let listed: Vec<(String, String)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("site "))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let host = parts.next().expect("host").to_string();
            let file = parts.next().expect("file").to_string();
            (host, file)
        })
        .collect();
    let name = |p: PathBuf| p.display().to_string();
    assert_eq!(
        listed,
        [
            (STRICT.to_string(), name(main.clone())),
            (HOST.to_string(), name(sites.join("cafe.toml"))),
            (LEGACY.to_string(), name(sites.join("legacy.toml"))),
        ],
        "stderr: {err}"
    );

    // legacy.toml says cafe too: both files are named, the second with line:column.
    std::fs::write(
        sites.join("legacy.toml"),
        format!("# a copy\n{}", Site::new(HOST, up).file_toml()),
    )
    .expect("write");
    let (code, out, err) = check().await;
    assert_eq!(code, Some(2), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("ok"), "stdout: {out}");
    let cafe = name(sites.join("cafe.toml"));
    let legacy = name(sites.join("legacy.toml"));
    assert!(
        err.contains(&format!("{legacy}:2:8: host: ")) && err.contains(&format!("{cafe}:1:8")),
        "the error must name both files: {err}"
    );

    // `run` refuses the same set, with the same message.
    let (code, _, run_err) = run_cli(
        &["run", "--config", &main.display().to_string()],
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(2), "stderr: {run_err}");
    assert!(
        run_err.contains(&format!("{legacy}:2:8: host: ")),
        "{run_err}"
    );
}
