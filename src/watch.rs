//! Watching the files the config names, so that a change reloads it with no signal: the config
//! file, the TLS certificates and keys. A file replaced by rename (cert-manager), or a directory
//! whose `..data` symlink is swapped (a Kubernetes ConfigMap or Secret), is a new inode, so the
//! watch is on the files' directories, and what counts is the files' contents: a reload runs
//! only when one of them reads differently. The `notify` crate (inotify) wakes the check at
//! once; a poll every second catches whatever a watch misses (a directory created later, an
//! exhausted inotify limit).

use notify::{RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the files must stay quiet before a change counts (an editor's burst of writes, a
/// cert-manager rename of the certificate then the key).
const SETTLE: Duration = Duration::from_millis(300);
/// How often the files are read even without an event.
const POLL: Duration = Duration::from_secs(1);

/// What the watched files hold: a hash of each one's contents (`None`: unreadable).
type Fingerprint = Vec<(PathBuf, Option<u64>)>;

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| {
            let hash = std::fs::read(f).ok().map(|bytes| {
                let mut h = DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            });
            (f.clone(), hash)
        })
        .collect()
}

pub struct Watcher {
    files: Vec<PathBuf>,
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
            files: Vec::new(),
            seen: Vec::new(),
            events,
            sender,
            inner: None,
        }
    }

    /// Watches these files from now on (their contents now are the baseline).
    pub fn set(&mut self, files: &[PathBuf]) {
        self.files = files.to_vec();
        self.seen = fingerprint(&self.files);
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
        let dirs: BTreeSet<&Path> = self.files.iter().filter_map(|f| f.parent()).collect();
        for dir in dirs {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling it every second");
            }
        }
        self.inner = Some(watcher);
    }

    /// Waits until a watched file reads differently than when last seen (and has stayed so for
    /// a moment).
    pub async fn changed(&mut self) {
        loop {
            tokio::select! {
                _ = self.events.recv() => {},
                _ = tokio::time::sleep(POLL) => {},
            }
            // Let the burst settle: wait until SETTLE passes without an event.
            while tokio::time::timeout(SETTLE, self.events.recv())
                .await
                .is_ok()
            {}
            let now = fingerprint(&self.files);
            if now != self.seen {
                self.seen = now;
                return;
            }
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
        w.set(std::slice::from_ref(&file));
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
}
