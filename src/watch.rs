//! Watching the files the config names, so that a change reloads it with no signal: the config
//! file, the files of `sites_dir` (and the directory itself, so that a file added, removed or
//! renamed counts), the TLS certificates and keys. A file replaced by rename (cert-manager), or
//! a directory whose `..data` symlink is swapped (a Kubernetes ConfigMap or Secret), is a new
//! inode, so the watch is on the files' directories, and what counts is the contents: a reload
//! runs only when a file reads differently, or a directory lists other site files. The `notify`
//! crate (inotify) wakes the check at once; a poll every second catches whatever a watch misses
//! (a directory created later, a symlink's target elsewhere, an exhausted inotify limit).

use notify::{RecursiveMode, Watcher as _};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the files must read the same before a change counts (an editor's burst of writes,
/// a cert-manager rename of the certificate then the key, a provisioning job's files).
const SETTLE: Duration = Duration::from_millis(300);
/// How often the files are read even without an event.
const POLL: Duration = Duration::from_secs(1);

/// What to watch: files by their contents, directories of site files by what they list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    pub files: Vec<PathBuf>,
    /// Directories read as `sites_dir` is (`config::site_files`).
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    File(PathBuf),
    Dir(PathBuf),
}

/// A hash of a file's contents (`None`: unreadable), or of a directory's site files: their
/// names and contents (`None`: the directory cannot be listed).
type Fingerprint = BTreeMap<Key, Option<u64>>;

fn hash_file(path: &Path, h: &mut DefaultHasher) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => {
            bytes.hash(h);
            true
        }
        Err(_) => false,
    }
}

fn read(key: &Key) -> Option<u64> {
    let mut h = DefaultHasher::new();
    match key {
        Key::File(path) => hash_file(path, &mut h).then_some(()),
        Key::Dir(dir) => crate::config::site_files(dir).ok().map(|files| {
            for f in files {
                f.hash(&mut h);
                // An unreadable file hashes differently from an empty one.
                hash_file(&f, &mut h).hash(&mut h);
            }
        }),
    }?;
    Some(h.finish())
}

fn keys(watched: &Watched) -> Vec<Key> {
    let files = watched.files.iter().cloned().map(Key::File);
    files
        .chain(watched.dirs.iter().cloned().map(Key::Dir))
        .collect()
}

/// An empty parent (a bare file name) is the working directory.
fn dir_or_dot(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

pub struct Watcher {
    watched: Watched,
    seen: Fingerprint,
    events: mpsc::UnboundedReceiver<()>,
    sender: mpsc::UnboundedSender<()>,
    inner: Option<notify::RecommendedWatcher>,
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Watcher {
    pub fn new() -> Watcher {
        let (sender, events) = mpsc::unbounded_channel();
        Watcher {
            watched: Watched::default(),
            seen: Fingerprint::new(),
            events,
            sender,
            inner: None,
        }
    }

    /// Watches these from now on. What was already watched keeps the contents it was last seen
    /// with (by [`Watcher::changed`] or [`Watcher::mark`], before the reload that read them), so
    /// a change made while a reload was reading is still a change; what is new is read now.
    pub fn set(&mut self, watched: &Watched) {
        let mut seen = Fingerprint::new();
        for key in keys(watched) {
            let value = match self.seen.get(&key) {
                Some(v) => *v,
                None => read(&key),
            };
            seen.insert(key, value);
        }
        self.seen = seen;
        self.watched = watched.clone();
        let tx = self.sender.clone();
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            // Any event in a watched directory wakes the check; the contents decide.
            let _ = tx.send(());
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config's files; polling them every second");
                self.inner = None;
                return;
            }
        };
        // A file's directory; a site directory itself and the directory holding it (where a
        // symlink swap of the whole directory happens).
        let files = self.watched.files.iter().filter_map(|f| f.parent());
        let dirs = self
            .watched
            .dirs
            .iter()
            .flat_map(|d| [Some(d.as_path()), d.parent()])
            .flatten();
        let to_watch: BTreeSet<&Path> = files.chain(dirs).map(dir_or_dot).collect();
        for dir in to_watch {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling it every second");
            }
        }
        self.inner = Some(watcher);
    }

    /// Takes what the watched files hold now as seen (before a reload on a signal reads them).
    pub fn mark(&mut self) {
        self.seen = self.read_all();
    }

    fn read_all(&self) -> Fingerprint {
        keys(&self.watched)
            .into_iter()
            .map(|k| {
                let v = read(&k);
                (k, v)
            })
            .collect()
    }

    /// Waits for `d`, then forgets the events that came meanwhile (they are what woke us).
    async fn pause(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
        while self.events.try_recv().is_ok() {}
    }

    /// Waits until a watched file reads differently, or a watched directory lists other site
    /// files, than when last seen, and has stayed so for a moment (`SETTLE`): a file still being
    /// written is not read half-way. Events only wake the check: the contents decide, so the
    /// busy directory a config file may sit in never delays it.
    pub async fn changed(&mut self) {
        loop {
            let woken = tokio::select! {
                _ = self.events.recv() => true,
                _ = tokio::time::sleep(POLL) => false,
            };
            if woken {
                // Gather the burst (an editor's writes, a rename then another) into one look.
                self.pause(SETTLE).await;
            }
            let mut now = self.read_all();
            if now == self.seen {
                continue;
            }
            // Changed: wait until it stops changing.
            loop {
                self.pause(SETTLE).await;
                let again = self.read_all();
                if again == now {
                    break;
                }
                now = again;
            }
            self.seen = now;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renamed_file_counts_and_an_untouched_one_does_not() {
        let dir = std::env::temp_dir().join(format!("sg-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("a.toml");
        std::fs::write(&file, "one").expect("write");
        let mut w = Watcher::new();
        w.set(&Watched {
            files: vec![file.clone()],
            dirs: Vec::new(),
        });
        // Nothing changes: no wake-up within a few polls.
        let quiet = tokio::time::timeout(Duration::from_millis(2500), w.changed()).await;
        assert!(quiet.is_err(), "woke without a change");
        // Replaced by rename, as cert-manager does.
        let tmp = dir.join(".a.toml.tmp");
        std::fs::write(&tmp, "two").expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("the rename was seen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_site_file_added_counts_and_a_hidden_one_does_not() {
        let dir = std::env::temp_dir().join(format!("sg-watch-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("a.toml"), "a").expect("write");
        let mut w = Watcher::new();
        w.set(&Watched {
            files: Vec::new(),
            dirs: vec![dir.clone()],
        });
        // A staged file (hidden) is not a change.
        std::fs::write(dir.join(".b.toml.tmp"), "b").expect("write");
        let quiet = tokio::time::timeout(Duration::from_millis(2500), w.changed()).await;
        assert!(quiet.is_err(), "a hidden file woke the watch");
        // Renamed into place: a new site file.
        std::fs::rename(dir.join(".b.toml.tmp"), dir.join("b.toml")).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("the new file was seen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_change_made_while_a_reload_reads_is_not_lost() {
        let dir = std::env::temp_dir().join(format!("sg-watch-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("a.toml");
        std::fs::write(&file, "one").expect("write");
        let watched = Watched {
            files: vec![file.clone()],
            dirs: vec![dir.clone()],
        };
        let mut w = Watcher::new();
        w.set(&watched);
        std::fs::write(&file, "two").expect("write");
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("the edit was seen");
        // The reload reads "two"; then, before it sets the watch again, the file changes once
        // more. The baseline is what was seen before the reload, so this still counts.
        std::fs::write(&file, "three").expect("write");
        w.set(&watched);
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("the edit made during the reload was seen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_busy_directory_does_not_hold_a_change_back() {
        let dir = std::env::temp_dir().join(format!("sg-watch-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("sessiongate.toml");
        std::fs::write(&file, "one").expect("write");
        let mut w = Watcher::new();
        w.set(&Watched {
            files: vec![file.clone()],
            dirs: Vec::new(),
        });
        // Another program writes in the same directory all the time.
        let noise = dir.join("other.log");
        let busy = tokio::spawn(async move {
            for i in 0..200u32 {
                let _ = std::fs::write(&noise, i.to_string());
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        std::fs::write(&file, "two").expect("write");
        tokio::time::timeout(Duration::from_secs(3), w.changed())
            .await
            .expect("the change was seen while the directory kept changing");
        busy.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
